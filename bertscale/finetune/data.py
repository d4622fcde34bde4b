"""Task data → model inputs: tokenisation (the pretraining tokenizer), subword/label alignment, splits, batches.

Pure functions over lists (explicit seeds), so tests can pin exact outputs:

- sentences: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` (token_type_ids 0 then 1), pairs truncated
  longest-first as in HuggingFace;
- tokens: every word is tokenised on its own; its first sub-token carries the word's tag id, the
  other sub-tokens and [CLS]/[SEP] carry ``IGNORE_INDEX`` so the loss and the metrics see one
  prediction per word.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from bertscale.data_pipeline.schema import SpecialTokens
from bertscale.data_pipeline.tokenizer import Processor, load_tokenizer_model, processor, special_tokens
from bertscale.errors import DataError
from bertscale.finetune.readers import (
    BUILTIN_DATASETS,
    Example,
    SentenceExample,
    TaggedExample,
    infer_format,
    read_examples,
)
from bertscale.masking import IGNORE_INDEX

if TYPE_CHECKING:
    from bertscale.finetune.config import DatasetConfig

SPLIT_NAMES = ("train", "validation", "test")


class Tokenizer(Protocol):
    """What we need of a tokenizer: SentencePieceProcessor's ``encode`` and the special ids."""

    special: SpecialTokens

    def encode(self, input: str | list[str], out_type: type = int) -> list: ...


@dataclass
class TaskTokenizer:
    """The pretraining tokenizer (SentencePiece or a HuggingFace WordPiece) and its special ids."""

    processor: Processor
    special: SpecialTokens

    def encode(self, input: str | list[str], out_type: type = int) -> list:
        return self.processor.encode(input, out_type=out_type)

    def get_piece_size(self) -> int:
        return self.processor.get_piece_size()


@dataclass
class Features:
    input_ids: list[int]
    token_type_ids: list[int]
    labels: int | list[int]  # a class id, or one id per token (IGNORE_INDEX where not scored)


@dataclass
class TaskData:
    labels: list[str]  # id → name
    splits: dict[str, list[Features]]
    counts: dict[str, int] = field(default_factory=dict)  # read/skipped/truncated… for the run log
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of skipped rows


def load_tokenizer(path: str | Path) -> TaskTokenizer:
    """The pretraining tokenizer (``tokenizer.model``, ``tokenizer.json`` or a HF tokenizer directory)."""
    proc = processor(load_tokenizer_model(path), where=str(path))
    return TaskTokenizer(proc, special_tokens(proc))


# --- encoding ----------------------------------------------------------------------------------


def truncate_longest_first(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer sequence until both fit (HF 'longest_first')."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode_sentence(
    tokenizer: Tokenizer, text: str, text_pair: str | None, max_seq_length: int
) -> tuple[list[int], list[int]]:
    cls, sep = tokenizer.special.cls_id, tokenizer.special.sep_id
    a = tokenizer.encode(text, out_type=int)
    if text_pair is None:
        a = a[: max_seq_length - 2]
        return [cls, *a, sep], [0] * (len(a) + 2)
    a, b = truncate_longest_first(a, tokenizer.encode(text_pair, out_type=int), max_seq_length - 3)
    return [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)


def align_word_labels(
    word_pieces: Sequence[Sequence[int]], word_labels: Sequence[int], max_seq_length: int, special: SpecialTokens
) -> tuple[list[int], list[int], int]:
    """``[CLS] pieces… [SEP]`` and per-token labels: a word's first piece gets its label, the rest -100.

    A word that tokenises to nothing becomes [UNK] so that it still gets a prediction. Returns
    (input_ids, labels, number of words cut off by max_seq_length).
    """
    input_ids, labels = [special.cls_id], [IGNORE_INDEX]
    budget = max_seq_length - 1  # room for the final [SEP]
    kept = 0
    for pieces, label in zip(word_pieces, word_labels, strict=True):
        pieces = list(pieces) or [special.unk_id]
        if len(input_ids) >= budget:
            break
        pieces = pieces[: budget - len(input_ids)]
        input_ids += pieces
        labels += [label] + [IGNORE_INDEX] * (len(pieces) - 1)
        kept += 1
    return [*input_ids, special.sep_id], [*labels, IGNORE_INDEX], len(word_labels) - kept


def featurize(
    examples: Sequence[Example], tokenizer: Tokenizer, label_to_id: dict[str, int], max_seq_length: int
) -> tuple[list[Features], Counter]:
    counts: Counter = Counter()
    features = []
    for ex in examples:
        if isinstance(ex, TaggedExample):
            pieces = tokenizer.encode(ex.words, out_type=int)
            tag_ids = [label_to_id[t] for t in ex.tags]
            ids, labels, cut = align_word_labels(pieces, tag_ids, max_seq_length, tokenizer.special)
            counts["truncated_words"] += cut
            features.append(Features(ids, [0] * len(ids), labels))
        else:
            ids, types = encode_sentence(tokenizer, ex.text, ex.text_pair, max_seq_length)
            counts["examples_at_max_length"] += int(len(ids) == max_seq_length)  # most were truncated
            features.append(Features(ids, types, label_to_id[ex.label]))
    return features, counts


# --- dataset assembly ---------------------------------------------------------------------------


def label_list(examples: Sequence[Example], given: Sequence[str] | None) -> list[str]:
    """The label set in id order: the configured one, else sorted (for BIO tags, 'O' first)."""
    if given:
        return list(given)
    if examples and isinstance(examples[0], TaggedExample):
        tags = {t for ex in examples for t in ex.tags}  # type: ignore[union-attr]
        return ["O", *sorted(tags - {"O"})]
    return sorted({ex.label for ex in examples})  # type: ignore[union-attr]


def split_indices(n: int, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Deterministic random split of range(n); 'train' gets what the fractions leave."""
    order = np.random.default_rng(seed).permutation(n)
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, fraction in fractions.items():
        size = round(n * fraction)
        out[name] = np.sort(order[start : start + size])
        start += size
    out["train"] = np.sort(order[start:])
    return out


def load_task_data(cfg: DatasetConfig, tokenizer: Tokenizer, max_seq_length: int, seed: int) -> TaskData:
    """Read, filter, split and tokenise the configured dataset."""
    read = _reader_for(cfg)
    main = read(cfg.path)
    skipped = list(main.skipped)
    examples = main.examples
    if cfg.max_examples is not None and len(examples) > cfg.max_examples:
        keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[: cfg.max_examples])
        examples = [examples[i] for i in keep]

    fixed = {"validation": cfg.validation_path, "test": cfg.test_path}
    fractions = {
        "validation": 0.0 if fixed["validation"] else cfg.validation_fraction,
        "test": 0.0 if fixed["test"] else cfg.test_fraction,
    }
    index = split_indices(len(examples), fractions, seed)
    raw = {name: [examples[i] for i in idx] for name, idx in index.items()}
    for name, path in fixed.items():
        if path:
            result = read(path)
            raw[name], skipped = result.examples, skipped + result.skipped

    all_examples = [ex for split in raw.values() for ex in split]
    labels = label_list(all_examples, cfg.labels or _builtin_labels(cfg))
    label_to_id = {name: i for i, name in enumerate(labels)}
    counts: Counter = Counter(read_examples=len(all_examples), skipped_rows=len(skipped))
    splits = {}
    for name in SPLIT_NAMES:
        kept = [ex for ex in raw[name] if _has_known_labels(ex, label_to_id)]
        counts["skipped_unknown_label"] += len(raw[name]) - len(kept)
        splits[name], split_counts = featurize(kept, tokenizer, label_to_id, max_seq_length)
        counts.update(split_counts)
        counts[f"{name}_examples"] = len(splits[name])
    if not splits["train"]:
        raise DataError(f"{cfg.path or cfg.name}: no training examples left after splitting and filtering")
    return TaskData(labels=labels, splits=splits, counts=dict(counts), skipped=skipped)


def _reader_for(cfg: DatasetConfig):
    builtin = BUILTIN_DATASETS.get(cfg.name or "")

    def read(path: str | None):
        if builtin is not None and path is None:
            return read_examples(
                builtin.locate(),
                builtin.format,
                text_column=builtin.text_column,
                label_column=builtin.label_column,
                on_error=cfg.on_error,
                encoding=builtin.encoding,
            )
        assert path is not None
        return read_examples(
            path,
            cfg.format or (builtin.format if builtin else infer_format(Path(path))),
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            text_pair_column=cfg.text_pair_column,
            on_error=cfg.on_error,
            encoding=cfg.encoding,
        )

    return read


def _builtin_labels(cfg: DatasetConfig) -> Sequence[str] | None:
    builtin = BUILTIN_DATASETS.get(cfg.name or "")
    return builtin.labels if builtin else None


def _has_known_labels(ex: Example, label_to_id: dict[str, int]) -> bool:
    if isinstance(ex, SentenceExample):
        return ex.label in label_to_id
    return all(t in label_to_id for t in ex.tags)


# --- batching ----------------------------------------------------------------------------------


def collate(features: Sequence[Features], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in the batch (``pad_id``, attention_mask 0, labels IGNORE_INDEX)."""
    width = max(len(f.input_ids) for f in features)
    batch = len(features)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    token_level = isinstance(features[0].labels, list)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long) if token_level else None
    for i, f in enumerate(features):
        n = len(f.input_ids)
        input_ids[i, :n] = torch.tensor(f.input_ids)
        token_type_ids[i, :n] = torch.tensor(f.token_type_ids)
        attention_mask[i, :n] = 1
        if labels is not None:
            labels[i, :n] = torch.tensor(f.labels)
    if labels is None:
        labels = torch.tensor([f.labels for f in features], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def train_batches(
    features: Sequence[Features], micro_batch_size: int, seed: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled micro-batches; each epoch reshuffles, each rank takes its share of a global batch.

    An epoch's tail that does not fill a global batch is dropped so every rank steps in lockstep.
    """
    global_batch = micro_batch_size * world_size
    if len(features) < global_batch:
        raise DataError(f"{len(features)} training examples cannot fill one batch of {global_batch}")
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(features))
        for start in range(0, len(order) - global_batch + 1, global_batch):
            chunk = order[start : start + global_batch][rank::world_size]
            yield collate([features[i] for i in chunk], pad_id)
        epoch += 1


def eval_batches(
    features: Sequence[Features], batch_size: int, pad_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(features), batch_size):
        yield collate(features[start : start + batch_size], pad_id)
