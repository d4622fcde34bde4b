"""Pretraining input: which samples form each global step (lanes), batch masking, collate, the loader.

Public API:
    PretrainBatches(root, split, ...)  iterable of this rank's micro batches from ``start_step``;
                                       ``.skipped`` (names of corrupt shards passed over under "skip"),
                                       ``.position()`` what a checkpoint records
    eval_batches(root, split, ...)     fixed evaluation batches, the same count on every rank
    mask_static(sample, draw), mask_dynamic(sample, rng, vocab, masked_lm_prob, max_predictions)
    mask_batch(input_ids, rng, vocab, masked_lm_prob, max_predictions)   a padded batch at once
                                       (the rule itself is bertscale.masking's)
    collate(input_ids, token_type_ids, lengths, labels, next_sentence_label) -> HF batch + unpad_indices
    batch_width(lengths, pad_to_multiple_of, max_position_embeddings) -> T of a padded batch

The global sample sequence (exact resume at any world size). A global batch of ``G`` sequences is
``P = G / micro_batch_size`` micro batches; micro batch ``u`` of every step comes from *lane*
``u``. The shard stream is the concatenation of per-epoch shard permutations (seeded by
``(seed, epoch)``); lane ``u`` reads stream entries ``u, u + P, u + 2P, ...`` in order, so
sample ``j`` of lane ``u`` is entry ``u + (j // S) * P`` at offset ``j % S`` (``S`` samples per
shard). Micro batch ``u`` of step ``s`` is lane ``u``'s samples ``[s * m, (s + 1) * m)`` and its
dynamic masks are drawn from one generator seeded by ``(seed, s, u)``. Rank ``r`` of ``W``
with ``A`` accumulation steps trains micro batches ``u = a * W + r`` (``a < A``): any ``W x A = P``
sees the same samples and masks in the same steps, loader workers only change who decodes, and
a position is just the step: resume opens the one shard it needs.

Shards are read whole (:func:`bertscale.data_pipeline.schema.load_shard`) and checked against
the manifest when opened. Under ``on_corrupt_shard="skip"`` a corrupt shard is replaced by the
next good shard of the same epoch's order (same offsets), so every reader makes the same choice
without talking to the others; each corrupt shard is logged and counted once.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bertscale.data_pipeline.schema import Sample, ShardArrays, load_manifest, load_shard, read_shard
from bertscale.errors import DataError
from bertscale.masking import (
    IGNORE_INDEX,
    MaskingVocab,
    apply_mask,
    mask_sequence,
    num_predictions,
    replacement,
)
from bertscale.model import UnpadIndices
from bertscale.runtime.faults import ignore_preemption_signals

log = logging.getLogger("bertscale")

Batch = dict[str, torch.Tensor]
OPEN_SHARDS = 3  # shards a reader keeps decoded (a micro batch spans at most two)


# --- masking and collation (pure functions of arrays and an explicit generator) -----------------


def mask_static(sample: Sample, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply the pipeline's precomputed mask draw ``draw % D``; returns (input_ids, labels)."""
    row = draw % sample.masked_positions.shape[0]
    return apply_mask(sample.input_ids, sample.masked_positions[row], sample.masked_ids[row])


def mask_dynamic(
    sample: Sample, rng: np.random.Generator, vocab: MaskingVocab, masked_lm_prob: float,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A mask drawn afresh for one sample by the pipeline's rule; returns (input_ids, labels)."""
    return mask_sequence(sample.input_ids, rng, vocab, masked_lm_prob, max_predictions)


def mask_batch(
    input_ids: np.ndarray, rng: np.random.Generator, vocab: MaskingVocab, masked_lm_prob: float,
    max_predictions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The masking rule of :mod:`bertscale.masking` (candidates, count, 80/10/10) for a padded (B, T)
    batch with one generator: each row's subset is its ``count`` smallest uniform keys."""
    candidates = ~vocab.is_special[input_ids]  # (B, T); [PAD] is special: padding is never chosen
    count = num_predictions(candidates.sum(1), masked_lm_prob, max_predictions)
    keys = rng.random(input_ids.shape)
    keys[~candidates] = 2.0
    kth = np.sort(keys, axis=1)[np.arange(len(keys)), np.maximum(count - 1, 0)]
    chosen = candidates & (keys <= kth[:, None]) & (count[:, None] > 0)
    roll, pick = rng.random((2, int(chosen.sum())))
    labels = np.where(chosen, input_ids, IGNORE_INDEX)
    ids = input_ids.copy()
    ids[chosen] = replacement(roll, pick, input_ids[chosen], vocab)
    return ids, labels


def collate(
    input_ids: np.ndarray,
    token_type_ids: np.ndarray,
    lengths: np.ndarray,
    labels: np.ndarray,
    next_sentence_label: np.ndarray,
) -> Batch:
    """Padded (B, T) arrays -> HF-style batch tensors, plus ``unpad_indices``
    (:class:`bertscale.model.UnpadIndices`: real tokens, sequence lengths, masked-LM rows), computed
    here on the host so that the model's step reads nothing back from the GPU."""
    attention_mask = torch.from_numpy((np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64))
    labels_t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
        "token_type_ids": torch.from_numpy(np.ascontiguousarray(token_type_ids, dtype=np.int64)),
        "attention_mask": attention_mask,
        "labels": labels_t,
        "next_sentence_label": torch.from_numpy(np.asarray(next_sentence_label, dtype=np.int64)),
        "unpad_indices": UnpadIndices.build(attention_mask, labels_t != IGNORE_INDEX),
    }


def batch_width(
    lengths: np.ndarray, pad_to_multiple_of: int = 1, max_position_embeddings: int | None = None
) -> int:
    """T of a batch: its longest sequence rounded up to a multiple (stable shapes), but never past
    the model's positions (a padded position is still looked up by the padded path)."""
    longest = int(lengths.max())
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return min(width, max(longest, max_position_embeddings)) if max_position_embeddings else width


def _pad(flat: np.ndarray, lengths: np.ndarray, width: int, fill: int) -> np.ndarray:
    out = np.full((len(lengths), width), fill, dtype=np.int64)
    out[np.arange(width) < lengths[:, None]] = flat
    return out


def _widen(x: np.ndarray, width: int, fill: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill) if width > x.shape[1] else x


def _rows(shard: ShardArrays, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat element indices of ``rows`` in ``shard.input_ids`` (and their lengths)."""
    starts, lengths = shard.offsets[rows], shard.lengths[rows]
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(starts - first, lengths) + np.arange(lengths.sum()), lengths, starts


# --- the sampler and reader ----------------------------------------------------------------------


class PretrainBatches:
    """Endless stream of this rank's micro batches (HF keys), from global step ``start_step``."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        num_workers: int = 0,
        masking: Literal["static", "dynamic"] = "static",
        masked_lm_prob: float = 0.15,
        max_predictions_per_seq: int | None = None,
        seed: int = 0,
        max_position_embeddings: int | None = None,
        pad_to_multiple_of: int = 1,
        start_step: int = 0,
        on_corrupt_shard: Literal["fail", "skip"] = "fail",
        sample_log: Path | None = None,
    ):
        self.root = Path(root)
        manifest = load_manifest(self.root)
        self.shards = manifest.shard_paths(self.root, split)
        if not self.shards:
            raise DataError(f"{self.root}: split '{split}' has no shards")
        self.expected = {
            p: s.samples for p, s in zip(self.shards, manifest.splits[split].shards, strict=True)
        }
        self.per_shard = manifest.splits[split].samples_per_shard
        if set(self.expected.values()) != {self.per_shard}:
            raise DataError(f"{self.root / 'manifest.json'}: shards of '{split}' differ in sample count")
        if max_position_embeddings is not None and manifest.max_seq_length > max_position_embeddings:
            raise DataError(
                f"{self.root}: shards hold sequences up to {manifest.max_seq_length} tokens, "
                f"more than the model's max_position_embeddings {max_position_embeddings}"
            )
        self.vocab_size = manifest.vocab_size
        self.max_position_embeddings, self.pad_to_multiple_of = max_position_embeddings, pad_to_multiple_of
        self.special = manifest.special()  # the tokenizer's ids, never constants
        self.vocab = self.special.masking_vocab()
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.accumulation = gradient_accumulation_steps
        self.lanes = world_size * gradient_accumulation_steps  # micro batches per global step
        self.num_workers = num_workers
        self.masking, self.seed = masking, seed
        self.masked_lm_prob, self.max_predictions_per_seq = masked_lm_prob, max_predictions_per_seq
        self.on_corrupt_shard = on_corrupt_shard
        self.start_step = start_step
        self.served = 0  # micro batches handed out by __iter__
        self.current = (start_step, -1)  # (step, micro batch) of the batch handed out last
        self.skipped: set[str] = set()  # corrupt shards met (by this process or its loader workers)
        self.sample_log = sample_log
        self._open: OrderedDict[Path, ShardArrays] = OrderedDict()
        self._corrupt: dict[Path, str] = {}

    def position(self) -> dict[str, Any]:
        """What a checkpoint records: enough to check that a resumed run continues the same sequence."""
        return {"micro_batch_size": self.micro_batch_size, "lanes": self.lanes, "seed": self.seed,
                "masking": self.masking, "skipped_shards": sorted(self.skipped)}  # fmt: skip

    # which sample is where

    def shard_at(self, cursor: int) -> Path:
        """The shard at stream entry ``cursor`` (before any corrupt-shard substitution)."""
        epoch, index = divmod(cursor, len(self.shards))
        return self.shards[self._order(epoch)[index]]

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))

    def micro_batch(self, t: int) -> tuple[int, int]:
        """(global step, micro batch index u within it) of this rank's ``t``-th micro batch from step 0."""
        step, a = divmod(t, self.accumulation)
        return step, a * self.world_size + self.rank

    def _shard(self, cursor: int) -> tuple[int, ShardArrays]:
        """(manifest index, arrays) of the shard serving stream entry ``cursor``; skips corrupt ones."""
        epoch, index = divmod(cursor, len(self.shards))
        order = self._order(epoch)
        for tries in range(len(self.shards)):
            path = self.shards[order[(index + tries) % len(self.shards)]]
            if path in self._open:
                self._open.move_to_end(path)
                return int(order[(index + tries) % len(self.shards)]), self._open[path]
            if path not in self._corrupt:
                try:
                    shard = load_shard(
                        path, vocab_size=self.vocab_size, expected_samples=self.expected[path], special=self.special
                    )
                except DataError as err:
                    if self.on_corrupt_shard == "fail":
                        raise
                    self._corrupt[path] = str(err)
                    self.skipped.add(path.name)
                    log.warning("%s; skipped (data.on_corrupt_shard=skip)", err)
                    continue
                self._open[path] = shard
                if len(self._open) > OPEN_SHARDS:
                    self._open.popitem(last=False)
                return int(order[(index + tries) % len(self.shards)]), shard
        raise DataError(f"{self.root}: all {len(self.shards)} shards of the split are corrupt")

    def read(self, step: int, lane: int) -> tuple[Batch, np.ndarray]:
        """Micro batch ``lane`` of global ``step`` and its sample ids (manifest shard index * S + row)."""
        m, per_shard = self.micro_batch_size, self.per_shard
        first = step * m
        parts = []
        for entry in range(first // per_shard, (first + m - 1) // per_shard + 1):
            lo, hi = max(first, entry * per_shard), min(first + m, (entry + 1) * per_shard)
            cursor = lane + entry * self.lanes
            index, shard = self._shard(cursor)
            rows = np.arange(lo - entry * per_shard, hi - entry * per_shard)
            parts.append((cursor // len(self.shards), index, shard, rows))
        lengths = np.concatenate([shard.lengths[rows] for _, _, shard, rows in parts])
        width = int(lengths.max())
        ids_flat = np.concatenate([s.input_ids[_rows(s, r)[0]] for _, _, s, r in parts])
        types_flat = np.concatenate([s.token_type_ids[_rows(s, r)[0]] for _, _, s, r in parts])
        input_ids = _pad(ids_flat, lengths, width, self.special.pad_id)
        token_type_ids = _pad(types_flat, lengths, width, 0)
        if self.masking == "dynamic":
            rng = np.random.default_rng([self.seed, step, lane])
            input_ids, labels = mask_batch(
                input_ids, rng, self.vocab, self.masked_lm_prob, self.max_predictions_per_seq
            )
        else:
            input_ids, labels = self._mask_static(parts, input_ids)
        nsp = np.concatenate([s.next_sentence_label[r] for _, _, s, r in parts])
        sample_ids = np.concatenate([index * per_shard + r for _, index, _, r in parts])
        # widened after masking: the masks are drawn on the same (B, longest) grid whatever the multiple
        width = batch_width(lengths, self.pad_to_multiple_of, self.max_position_embeddings)
        input_ids, token_type_ids, labels = (
            _widen(x, width, fill)
            for x, fill in ((input_ids, self.special.pad_id), (token_type_ids, 0), (labels, IGNORE_INDEX))
        )
        return collate(input_ids, token_type_ids, lengths, labels, nsp), sample_ids

    @staticmethod
    def _mask_static(parts: list, input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pipeline's draw ``epoch % D`` of every row, applied to the padded batch."""
        rows_of, positions, ids = [], [], []
        row0 = 0
        for epoch, _, shard, rows in parts:
            draws = shard.mask_draws[rows]
            width = np.diff(shard.mask_offsets)[rows] // draws  # M of each row
            starts = shard.mask_offsets[rows] + (epoch % draws) * width
            first = np.concatenate([[0], np.cumsum(width)[:-1]])
            flat = np.repeat(starts - first, width) + np.arange(width.sum())
            rows_of.append(np.repeat(row0 + np.arange(len(rows)), width))
            positions.append(shard.masked_positions[flat].astype(np.int64))
            ids.append(shard.masked_ids[flat])
            row0 += len(rows)
        r, p = np.concatenate(rows_of), np.concatenate(positions)
        labels = np.full_like(input_ids, IGNORE_INDEX)
        labels[r, p] = input_ids[r, p]
        input_ids = input_ids.copy()
        input_ids[r, p] = np.concatenate(ids)
        return input_ids, labels

    # iteration

    def __iter__(self) -> Iterator[Batch]:
        first = self.start_step * self.accumulation + self.served
        loader = DataLoader(
            _MicroBatches(self, first),
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=2 if self.num_workers else None,
            pin_memory=torch.cuda.is_available(),  # lets the copy to the GPU overlap compute
            worker_init_fn=ignore_preemption_signals,  # the rank finishes its step; workers must stay
            # its own generator: seeding workers must not draw from the global RNG that dropout uses
            generator=torch.Generator().manual_seed(self.seed),
        )
        log_file = None
        if self.sample_log is not None:  # every rank writes its own; rank 0 may not have made the dir yet
            self.sample_log.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.sample_log.open("a", encoding="utf-8")
        try:
            for t, batch, sample_ids, skipped in loader:
                if batch is None:  # a worker's one-line DataError, re-raised here
                    raise DataError(skipped)
                self.skipped.update(skipped)
                self.served += 1
                self.current = step, lane = self.micro_batch(t)
                if log_file is not None:
                    log_file.write(
                        json.dumps({"step": step + 1, "micro": lane, "samples": sample_ids.tolist()}) + "\n"
                    )
                    log_file.flush()
                yield batch
        finally:
            if log_file is not None:
                log_file.close()


class _MicroBatches(IterableDataset):
    """Runs in each DataLoader worker: worker k of K serves micro batches first + k, first + k + K, ...

    (the DataLoader takes batches from its workers round-robin, so the main process sees them in order).
    """

    def __init__(self, owner: PretrainBatches, first: int):
        self.owner, self.first = owner, first

    def __iter__(self) -> Iterator[tuple[int, Any, Any, Any]]:
        info = get_worker_info()
        k, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        o = self.owner
        t = self.first + k
        while True:
            step, lane = o.micro_batch(t)
            before = set(o.skipped)
            try:
                batch, sample_ids = o.read(step, lane)
            except DataError as err:  # crossing the worker boundary would bury the message in a traceback
                yield t, None, None, str(err)
                return
            yield t, batch, sample_ids, sorted(o.skipped - before)
            t += workers


def eval_batches(
    root: str | Path, split: str, *, micro_batch_size: int, rank: int, world_size: int, max_batches: int,
    pad_to_multiple_of: int = 1, max_position_embeddings: int | None = None,
) -> list[Batch]:  # fmt: skip
    """This rank's slice of the first ``max_batches`` global batches of ``split`` (static draw 0).

    Every rank gets the same number of batches (an incomplete last global batch is dropped):
    ZeRO-3 gathers parameters collectively in each forward, so ranks must run equally many.
    """
    import itertools

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
        masked = [mask_static(s, 0) for s in mine]
        lengths = np.array([len(ids) for ids, _ in masked])
        width = batch_width(lengths, pad_to_multiple_of, max_position_embeddings)
        batches.append(
            collate(
                _pad(np.concatenate([ids for ids, _ in masked]), lengths, width, special.pad_id),
                _pad(np.concatenate([s.token_type_ids for s in mine]), lengths, width, 0),
                lengths,
                _pad(np.concatenate([lab for _, lab in masked]), lengths, width, IGNORE_INDEX),
                np.array([s.next_sentence_label for s in mine]),
            )
        )
    return batches
