"""Resumable WebDataset reader for pretraining: shards split by rank and worker, MLM masking, collate.

Public API:
    ReaderPosition                     where one reader is: (epoch, shard_cursor, sample_offset)
    StreamState                        a rank's position: batches consumed + one ReaderPosition per worker
    PretrainBatches(root, split, ...)  iterable of padded HF-style batches; ``.state`` after each batch,
                                       ``.skipped_shards`` (corrupt shards passed over under "skip")
    eval_batches(root, split, ...)     fixed evaluation batches, the same count on every rank
    mask_static(sample, draw), mask_dynamic(sample, rng, vocab, masked_lm_prob, max_predictions)
                                       (the rule itself is bertscale.masking's)
    collate(examples, pad_id)          -> HF batch: input_ids, token_type_ids, attention_mask, labels,
                                          next_sentence_label

The shard stream is the concatenation of per-epoch shard permutations (seeded by ``(seed, epoch)``).
Reader ``k`` of ``N = world_size * workers`` reads stream entries ``k, k + N, k + 2N, ...``, so
every reader has data whatever the shard count, and the assignment of samples to global batches
does not depend on how the N readers are split into ranks and workers (a 1-rank run with 2
workers and 2 accumulation steps sees exactly the batches of a 2-rank run). A position is a
stream index and a sample offset: resuming opens that one shard and skips ``offset`` samples
without decoding them, so resume never re-reads consumed data.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bertscale.data_pipeline.schema import Sample, load_manifest, read_shard
from bertscale.errors import DataError
from bertscale.masking import IGNORE_INDEX, MaskingVocab, apply_mask, mask_sequence

log = logging.getLogger("bertscale")

Batch = dict[str, torch.Tensor]
Example = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # input_ids, labels, token_type_ids, nsp label


@dataclass
class ReaderPosition:
    epoch: int = 0
    shard_cursor: int = 0  # index into the endless shard stream (epoch = cursor // num_shards)
    sample_offset: int = 0  # samples of that shard already consumed
    skipped_shards: int = 0  # corrupt shards this reader skipped (on_corrupt_shard="skip")


@dataclass
class StreamState:
    batches: int = 0  # batches this rank consumed (decides which worker serves the next one)
    workers: list[ReaderPosition] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamState:
        return cls(data["batches"], [ReaderPosition(**w) for w in data["workers"]])


# --- masking (pure functions of the sample and an explicit generator) --------------------------


def mask_static(sample: Sample, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the pipeline's precomputed mask draw ``draw % D``; returns (input_ids, labels)."""
    row = draw % sample.masked_positions.shape[0]
    return apply_mask(sample.input_ids, sample.masked_positions[row], sample.masked_ids[row])


def mask_dynamic(
    sample: Sample, rng: np.random.Generator, vocab: MaskingVocab, masked_lm_prob: float,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A mask drawn afresh by the pipeline's rule; returns (input_ids, labels)."""
    return mask_sequence(sample.input_ids, rng, vocab, masked_lm_prob, max_predictions)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """(input_ids, labels, token_type_ids, nsp_label) examples -> right-padded HF-style batch."""
    length = max(len(ids) for ids, *_ in examples)
    size = len(examples)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)  # the manifest's [PAD]
    labels = torch.full((size, length), IGNORE_INDEX, dtype=torch.long)
    token_type_ids = torch.zeros((size, length), dtype=torch.long)
    attention_mask = torch.zeros((size, length), dtype=torch.long)
    for i, (ids, lab, types, _) in enumerate(examples):
        n = len(ids)
        input_ids[i, :n] = torch.from_numpy(ids)
        labels[i, :n] = torch.from_numpy(lab)
        token_type_ids[i, :n] = torch.from_numpy(types.astype(np.int64))
        attention_mask[i, :n] = 1
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "next_sentence_label": torch.tensor([e[3] for e in examples], dtype=torch.long),
    }


# --- the reader ---------------------------------------------------------------------------------


class _ShardStream(IterableDataset):
    """Runs inside each DataLoader worker: yields (batch, logical_worker, position_after_batch)."""

    def __init__(self, owner: PretrainBatches):
        self.owner = owner

    def __iter__(self) -> Iterator[tuple[Any, int, ReaderPosition]]:
        o = self.owner
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # DataLoader serves batch i from worker i % W; rotate so the next batch after a resume
        # comes from the reader that would have served it in an uninterrupted run.
        logical = (physical + o.state.batches) % o.workers
        reader = o.rank * o.workers + logical
        position = dataclasses.replace(o.state.workers[logical])
        try:
            for batch in o.read_batches(reader, position):
                yield batch, logical, dataclasses.replace(position)
        except DataError as err:  # crossing the worker boundary would bury the message in a traceback
            yield None, logical, str(err)  # type: ignore[misc]


class PretrainBatches:
    """Endless (``loop=True``) or one-pass stream of this rank's padded MLM+NSP batches."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        masking: Literal["static", "dynamic"] = "static",
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int | None = None,
        seed: int = 0,
        loop: bool = True,
        max_position_embeddings: int | None = None,
        state: StreamState | None = None,
        on_corrupt_shard: Literal["fail", "skip"] = "fail",
    ):
        self.root = Path(root)
        manifest = load_manifest(self.root)
        self.shards = manifest.shard_paths(self.root, split)
        if not self.shards:
            raise DataError(f"{self.root}: split '{split}' has no shards")
        if max_position_embeddings is not None and manifest.max_seq_length > max_position_embeddings:
            raise DataError(
                f"{self.root}: shards hold sequences up to {manifest.max_seq_length} tokens, "
                f"more than the model's max_position_embeddings {max_position_embeddings}"
            )
        self.special = manifest.special()  # the tokenizer's ids, never constants
        self.vocab = self.special.masking_vocab()
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.workers = max(1, num_workers)  # in-process reading counts as one worker
        self.readers = world_size * self.workers
        self.masking, self.seed, self.loop = masking, seed, loop
        self.masked_lm_prob, self.max_predictions_per_seq = masked_lm_prob, max_predictions_per_seq
        self.on_corrupt_shard = on_corrupt_shard
        if state is None:
            first = [rank * self.workers + w for w in range(self.workers)]
            state = StreamState(0, [ReaderPosition(0, k, 0) for k in first])
        elif len(state.workers) != self.workers:
            raise DataError(
                f"saved data position has {len(state.workers)} workers per rank, config has {self.workers}"
            )
        self.state = state

    @property
    def skipped_shards(self) -> int:
        return sum(w.skipped_shards for w in self.state.workers)

    def shard_at(self, cursor: int) -> Path:
        epoch, index = divmod(cursor, len(self.shards))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return self.shards[order[index]]

    def example(self, sample: Sample, epoch: int) -> Example:
        if self.masking == "static":
            ids, labels = mask_static(sample, draw=epoch)
        else:  # keyed by (seed, epoch, sample) so a resumed run redraws exactly the same masks
            rng = np.random.default_rng([self.seed, epoch, zlib.crc32(sample.key.encode())])
            ids, labels = mask_dynamic(
                sample, rng, self.vocab, self.masked_lm_prob, self.max_predictions_per_seq
            )
        return ids, labels, sample.token_type_ids, sample.next_sentence_label

    def read_batches(self, reader: int, position: ReaderPosition) -> Iterator[Batch]:
        """Batches of reader ``reader`` from ``position``, which is advanced in place as samples are used."""
        pending: list[Example] = []
        skipped_in_a_row = 0
        while self.loop or position.shard_cursor < len(self.shards):
            position.epoch = position.shard_cursor // len(self.shards)
            try:
                shard = self.shard_at(position.shard_cursor)
                for sample in read_shard(shard, start=position.sample_offset, special=self.special):
                    pending.append(self.example(sample, position.epoch))
                    position.sample_offset += 1
                    if len(pending) == self.micro_batch_size:
                        yield collate(pending, self.special.pad_id)
                        pending = []
                skipped_in_a_row = 0
            except DataError as err:  # samples read before the damage are kept: resume sees the same
                if self.on_corrupt_shard == "fail":
                    raise
                position.skipped_shards += 1
                skipped_in_a_row += 1
                log.warning("%s; skipped (data.on_corrupt_shard=skip)", err)
                if skipped_in_a_row >= len(self.shards):  # an endless stream of nothing but bad shards
                    raise DataError(f"{self.root}: {skipped_in_a_row} corrupt shards in a row") from None
            position.shard_cursor += self.readers
            position.sample_offset = 0
        if pending:  # one-pass (evaluation) readers keep the tail
            yield collate(pending, self.special.pad_id)

    def __iter__(self) -> Iterator[Batch]:
        loader = DataLoader(
            _ShardStream(self),
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=2 if self.num_workers else None,
            pin_memory=torch.cuda.is_available(),  # lets the copy to the GPU overlap compute
            # its own generator: seeding workers must not draw from the global RNG that dropout uses,
            # or a resumed run (which builds its loader after restoring that RNG) would diverge
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch, logical, position in loader:
            if batch is None:
                raise DataError(position)
            self.state.workers[logical] = position
            self.state.batches += 1
            yield batch


def eval_batches(
    root: str | Path, split: str, *, micro_batch_size: int, rank: int, world_size: int, max_batches: int
) -> list[Batch]:
    """This rank's slice of the first ``max_batches`` global batches of ``split`` (static draw 0).

    Every rank gets the same number of batches (an incomplete last global batch is dropped):
    ZeRO-3 gathers parameters collectively in each forward, so ranks must run equally many.
    """
    root = Path(root)
    manifest = load_manifest(root)
    paths, special = manifest.shard_paths(root, split), manifest.special()
    stream = itertools.chain.from_iterable(read_shard(p, special=special) for p in paths)
    samples = list(itertools.islice(stream, max_batches * micro_batch_size * world_size))
    micro_batch_size = min(micro_batch_size, len(samples) // world_size)  # a small split still counts
    per_global = micro_batch_size * world_size
    batches = []
    for first in range(0, len(samples) - per_global + 1, per_global or 1):
        mine = samples[first + rank * micro_batch_size : first + (rank + 1) * micro_batch_size]
        examples = [(*mask_static(s, 0), s.token_type_ids, s.next_sentence_label) for s in mine]
        batches.append(collate(examples, special.pad_id))
    return batches
