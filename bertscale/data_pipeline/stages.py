"""The pipeline's stages, one function each, as the Ray tasks of run.py call them (no Ray here).

read → clean → tokenize → pairs + masks → plan → shards. Each stage reads its inputs from files
and writes its results to files (the spill directory, or the output's temporary directory for
shards), returning only counts, so the driver that schedules them never holds text, token ids or
samples. Every document's randomness comes from (seed, doc_id), and the plan orders samples by
global index, so no stage's output depends on how the work was cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertscale.data_pipeline import corpora, multistream, r_datasets, sources, spill
from bertscale.data_pipeline.config import SplitConfig, TokenizerConfig
from bertscale.data_pipeline.instances import Corpus, SampleRecipe, range_samples
from bertscale.data_pipeline.schema import SPLITS, ShardInfo, shard_name
from bertscale.data_pipeline.shards import SampleBatch, ShardPlan, plan_shards, write_shard
from bertscale.data_pipeline.tokenizer import Processor, processor, train_tokenizer
from bertscale.errors import DataError

CLEAN_BATCH_CHARS = 256_000  # raw wikitext per cleaning batch: small enough to spread, big enough to amortise
BUILD_BLOCK_TOKENS = 1 << 17  # tokens per vectorised pairs/masks/serialise step (memory ~ 30x this)


# --- read + clean ------------------------------------------------------------------------------


@dataclass
class ReadUnit:
    """What one read task reads: a whole file, or a byte range of a multistream dump."""

    kind: str  # "wiki" | "book" | "lines" (a document per line) | "r" (r://PACKAGE[/NAME]) | "jsonl" | "parquet" | "text"
    path: str
    start: int = 0
    end: int | None = None  # None: the whole file
    header: bytes = b""  # the dump's XML header, put before a range that does not start at 0
    field: str = "text"  # jsonl / parquet: where a record's text is


@dataclass
class Chunk:
    """One clean spill file and its counts."""

    path: Path
    documents: int  # with at least one sentence
    sentences: int
    raws: int  # raw documents the batch read (documents without text included)


def clean_path(spill_dir: Path, unit: int, batch: int) -> Path:
    return spill_dir / f"clean-{unit:06d}-{batch:06d}.bin"


def raw_documents(unit: ReadUnit) -> Iterator[sources.RawDocument]:
    if unit.kind == "book":
        yield sources.read_book(unit.path)
    elif unit.kind == "lines":
        yield from sources.read_line_documents(unit.path)
    elif unit.kind == "r":
        yield from r_datasets.iter_r_texts(unit.path.removeprefix("r://"))
    elif unit.kind == "jsonl":
        yield from corpora.iter_jsonl(unit.path, unit.field)
    elif unit.kind == "parquet":
        yield from corpora.iter_parquet(unit.path, unit.field)
    elif unit.kind == "text":
        yield corpora.read_text_file(unit.path)
    elif unit.end is None:
        yield from sources.iter_wiki_pages(unit.path)
    else:
        yield from multistream.range_pages(unit.path, unit.start, unit.end, unit.header)


def raw_batches(unit: ReadUnit, limit: int | None) -> Iterator[list[sources.RawDocument]]:
    """The unit's raw documents (at most ``limit``) in batches of about CLEAN_BATCH_CHARS.

    Bad input raises DataError with the reason after the good batches before it were yielded.
    """
    batch: list[sources.RawDocument] = []
    chars = kept = 0
    try:
        for raw in raw_documents(unit):
            if limit is not None and kept >= limit:
                break
            batch.append(raw)
            kept, chars = kept + 1, chars + len(raw.text)
            if chars >= CLEAN_BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    except DataError as err:
        if batch:
            yield batch
        raise DataError(f"{err}" + (f" ({kept} articles before it kept)" if kept else "")) from None
    except OSError as err:
        raise DataError(f"unreadable ({err.strerror or err})") from None
    if batch:
        yield batch


def clean_batch(raws: list[sources.RawDocument], min_sentence_chars: int, path: Path) -> Chunk:
    """Clean and sentence-split the batch → its clean spill file."""
    documents, raw_index = [], []
    for i, raw in enumerate(raws):
        doc = sources.clean_document(raw, min_sentence_chars)
        if doc.sentences:
            documents.append(doc.sentences)
            raw_index.append(i)
    sentences = spill.write_documents(path, documents, np.array(raw_index, np.int64))
    return Chunk(path, len(documents), sentences, len(raws))


def read_unit(
    unit: ReadUnit, number: int, limit: int | None, min_sentence_chars: int, spill_dir: Path
) -> tuple[list[Chunk], str | None]:
    """Read and clean the unit → (its chunks, why it stopped early or None); good data is kept."""
    chunks: list[Chunk] = []
    try:
        for raws in raw_batches(unit, limit):
            chunks.append(clean_batch(raws, min_sentence_chars, clean_path(spill_dir, number, len(chunks))))
    except DataError as err:
        return chunks, str(err)
    return chunks, None


# --- tokenize ----------------------------------------------------------------------------------


def sample_sentences(chunks: list[Chunk], picks: list[np.ndarray], path: Path) -> int:
    """The sentences at ``picks`` (indices per chunk) of the clean files → one file."""
    sentences = []
    for chunk, pick in zip(chunks, picks, strict=True):
        if len(pick):
            flat = [s for doc in spill.read_documents(chunk.path) for s in doc]
            sentences.extend(flat[i] for i in pick.tolist())
    return spill.write_documents(path, [sentences])


def train_from_samples(paths: list[Path], counts: list[int], cfg: TokenizerConfig, seed: int) -> bytes:
    """The tokenizer trained on the sentences of these clean (or sample) files, in order."""
    return train_tokenizer(spill.SpilledSentences(paths, counts), cfg, seed)


def encode_documents(
    model_proto: bytes, documents: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """→ (flat token ids, length per non-empty sentence, non-empty sentences per document)."""
    return _encode(processor(model_proto), documents)


def _encode(
    sp: Processor, documents: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids: list[list[int]] = sp.encode([s for doc in documents for s in doc], out_type=int)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    bounds = np.cumsum([0, *(len(doc) for doc in documents)])
    per_doc = np.array([np.count_nonzero(lengths[a:b]) for a, b in itertools.pairwise(bounds)], np.int64)
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return tokens, lengths[lengths > 0], per_doc


def encode_files(model_proto: bytes, paths: list[Path], spill_dir: Path, part: int) -> tuple[int, int]:
    """Encode clean files one at a time into encode part ``part`` → (documents kept, tokens)."""
    sp, docs, num_tokens = processor(model_proto), 0, 0  # the model loaded once, not per file
    with spill.encoded_writer(spill_dir, part) as out:
        for path in paths:
            tokens, lengths, per_doc = _encode(sp, spill.read_documents(path))
            per_doc = per_doc[per_doc > 0]  # documents left without a token are dropped
            out["tokens"].write(tokens.tobytes())
            out["lengths"].write(lengths.tobytes())
            out["docs"].write(per_doc.tobytes())
            docs, num_tokens = docs + len(per_doc), num_tokens + len(tokens)
    return docs, num_tokens


def join_corpus(spill_dir: Path, encode_parts: int, parts: int) -> tuple[int, list[tuple[int, int]]]:
    """Join the encode parts into one corpus → (sentences, about ``parts`` document ranges of
    equal tokens for the pairs stage)."""
    sentences = spill.join_corpus(spill_dir, encode_parts)
    corpus = spill.load_corpus(spill_dir)
    cum_tokens = corpus.sentence_offsets[corpus.document_offsets[1:]]  # (D,) tokens up to each document
    if len(cum_tokens) == 0:
        return sentences, []
    cuts = np.searchsorted(cum_tokens, cum_tokens[-1] * np.arange(1, parts) / parts, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(cum_tokens)]]))
    return sentences, [(int(a), int(b)) for a, b in itertools.pairwise(bounds.tolist()) if b > a]


# --- pairs + masks -----------------------------------------------------------------------------


def sample_blocks(corpus: Corpus, first: int, last: int, recipe: SampleRecipe) -> Iterator[SampleBatch]:
    """Samples of documents ``first..last-1``, serialised to tar records, in blocks of about
    ``BUILD_BLOCK_TOKENS`` (bounded memory; every document's randomness is its own, so the
    blocking changes no byte)."""
    doc_tokens = np.diff(corpus.sentence_offsets[corpus.document_offsets[first : last + 1]])
    bounds = np.searchsorted(
        np.cumsum(doc_tokens), np.arange(BUILD_BLOCK_TOKENS, doc_tokens.sum(), BUILD_BLOCK_TOKENS)
    )
    cuts = np.unique(np.concatenate([[0], bounds + 1, [last - first]]).clip(0, last - first)) + first
    for a, b in itertools.pairwise(cuts.tolist()):
        yield SampleBatch.from_arrays(range_samples(corpus, a, b, recipe))


def build_samples(corpus: Corpus, first: int, last: int, recipe: SampleRecipe) -> SampleBatch:
    """:func:`sample_blocks` in memory, as one batch."""
    return SampleBatch.concatenate(list(sample_blocks(corpus, first, last, recipe)))


def records_path(spill_dir: Path, part: int) -> Path:
    return spill_dir / f"records-{part:06d}.bin"


def samples_part(spill_dir: Path, part: int, first: int, last: int, recipe: SampleRecipe) -> tuple[int, int]:
    """Samples of documents ``first..last-1`` → records + metadata files; returns (samples, random Bs)."""
    corpus = spill.load_corpus(spill_dir)
    blocks = sample_blocks(corpus, first, last, recipe)
    batch = spill.spill_records(blocks, records_path(spill_dir, part))
    spill.save_samples(spill_dir / f"samples-{part:06d}.npy", batch, part)
    return len(batch), int(batch.labels.sum())


# --- plan + shards -----------------------------------------------------------------------------


@dataclass
class SplitPlan:
    shards: int
    repeats_from: int  # in the last shard, positions from here on repeat earlier samples
    dropped: int


def num_validation(num_docs: int, fraction: float) -> int:
    """Documents in the validation split: at least one and one short of all, if any are asked for."""
    num_val = round(fraction * num_docs)
    if fraction > 0 and num_docs >= 2:
        num_val = min(max(num_val, 1), num_docs - 1)
    return num_val


def validation_documents(num_docs: int, fraction: float, seed: int) -> np.ndarray:
    """The documents of the validation split (a seeded choice; a document never straddles splits)."""
    return np.random.default_rng([seed, 0x5]).permutation(num_docs)[: num_validation(num_docs, fraction)]


def plan_splits(
    spill_dir: Path, parts: int, num_docs: int, cfg: SplitConfig, seed: int
) -> dict[str, SplitPlan]:
    """Split by document, shuffle each split (seeded), cut into equal shards: ``plan-{split}.npy``
    holds each shard's global sample indices (one row per shard). Raises DataError if a split
    cannot fill one shard."""
    table = spill.join_samples(
        [spill_dir / f"samples-{p:06d}.npy" for p in range(parts)], spill_dir / "samples.npy"
    )
    in_validation = np.isin(table["doc_id"], validation_documents(num_docs, cfg.validation_fraction, seed))
    members = {"train": np.flatnonzero(~in_validation), "validation": np.flatnonzero(in_validation)}
    plans = {}
    for index, split in enumerate(SPLITS):
        order = np.random.default_rng([seed, 0x51, index]).permutation(members[split])
        shards, dropped = plan_shards(order, cfg.samples_per_shard, cfg.remainder, split)
        rows = (
            np.stack([s.indices for s in shards])
            if shards
            else np.zeros((0, cfg.samples_per_shard), np.int64)
        )
        with spill.spill_file(spill_dir / f"plan-{split}.npy") as f:
            np.save(f, rows.astype(np.int64))
        repeats_from = shards[-1].repeats_from if shards else cfg.samples_per_shard
        plans[split] = SplitPlan(len(shards), repeats_from, dropped)
    return plans


def write_shards(
    spill_dir: Path, parts: int, out_dir: Path, split: str, first: int, last: int, plan: SplitPlan
) -> list[ShardInfo]:
    """Shards ``first..last-1`` of ``split``, each written whole (atomically) from the spilled records
    of the ``parts`` sample parts."""
    table = np.load(spill_dir / "samples.npy", mmap_mode="r")
    rows = np.load(spill_dir / f"plan-{split}.npy", mmap_mode="r")
    records = [records_path(spill_dir, p) for p in range(parts)]
    infos = []
    for index in range(first, last):
        indices = np.asarray(rows[index])
        batch = spill.sample_batch(np.asarray(table[indices]), records)
        repeats_from = plan.repeats_from if index == plan.shards - 1 else len(indices)
        try:
            infos.append(
                write_shard(
                    out_dir / shard_name(split, index),
                    batch,
                    ShardPlan(np.arange(len(indices)), repeats_from),
                )
            )
        finally:
            batch.close()
    return infos
