"""The shard reader: rank/worker split, exact O(1) resume, masking statistics, collate, bad shards."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import bertscale.data_pipeline.schema as schema
from bertscale.data_pipeline.schema import load_manifest, read_shard
from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.errors import DataError
from bertscale.pretrain.data import (
    IGNORE_INDEX,
    PretrainBatches,
    StreamState,
    collate,
    eval_batches,
    mask_dynamic,
    mask_static,
)

VOCAB_SIZE = 96  # of the synthetic shards (conftest)
SPECIAL = trained_special(VOCAB_SIZE)
CLS_ID, SEP_ID, MASK_ID, NUM_SPECIAL_TOKENS = SPECIAL.cls_id, SPECIAL.sep_id, SPECIAL.mask_id, 5


def take(reader: PretrainBatches, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(reader), n))


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        for key in x:
            assert torch.equal(x[key], y[key]), f"batch {i} differs in {key}"


def test_batches_do_not_depend_on_rank_worker_layout(synthetic_shards):
    """1 rank x 2 workers serves exactly the batches of 2 ranks x 1 reader, interleaved."""
    kw = dict(micro_batch_size=5, masking="dynamic", seed=3)
    single = take(PretrainBatches(synthetic_shards, "train", num_workers=2, **kw), 10)
    rank0 = take(PretrainBatches(synthetic_shards, "train", rank=0, world_size=2, **kw), 5)
    rank1 = take(PretrainBatches(synthetic_shards, "train", rank=1, world_size=2, **kw), 5)
    assert_same(single[0::2], rank0)
    assert_same(single[1::2], rank1)
    assert not torch.equal(rank0[0]["input_ids"], rank1[0]["input_ids"])  # ranks read different data


def test_ranks_partition_an_epoch(synthetic_shards):
    """Over one epoch the two ranks' samples are disjoint and together cover every training sample."""
    manifest = load_manifest(synthetic_shards)
    total = manifest.splits["train"].samples
    seen = []
    for rank in (0, 1):
        reader = PretrainBatches(synthetic_shards, "train", micro_batch_size=4, rank=rank, world_size=2)
        for batch in take(reader, total // 8):
            seen += [
                tuple(row[m.bool()].tolist())
                for row, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)
            ]
    assert len(seen) == total
    assert len(set(seen)) == total


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_the_same_batches(synthetic_shards, workers):
    kw = dict(micro_batch_size=6, num_workers=workers, masking="dynamic", seed=1)
    full = take(PretrainBatches(synthetic_shards, "train", **kw), 15)  # crosses an epoch boundary
    first = PretrainBatches(synthetic_shards, "train", **kw)
    head = take(first, 7)
    saved = StreamState.from_dict(first.state.to_dict())  # as trainer_state.json round-trips it
    tail = take(PretrainBatches(synthetic_shards, "train", state=saved, **kw), 8)
    assert_same(full, head + tail)


def test_resume_decodes_nothing_before_the_position(tmp_path, monkeypatch, write_shards):
    """O(1) resume: consumed shards are never opened (corrupting them is harmless) and the current
    shard's consumed samples are skipped without decoding."""
    root = write_shards(tmp_path / "shards", {"train": 6}, per_shard=10)
    kw = dict(micro_batch_size=4, seed=5)
    full = take(PretrainBatches(root, "train", **kw), 12)
    first = PretrainBatches(root, "train", **kw)
    take(first, 7)  # 28 samples: shards at stream positions 0, 1 done, 8 samples of the third
    state = first.state.workers[0]
    assert (state.shard_cursor, state.sample_offset) == (2, 8)
    reader = PretrainBatches(root, "train", state=StreamState.from_dict(first.state.to_dict()), **kw)
    for cursor in (0, 1):  # overwrite the consumed shards with garbage
        reader.shard_at(cursor).write_bytes(b"not a tar file" * 100)
    decoded = []
    real_decode = schema.decode_sample
    monkeypatch.setattr(
        schema, "decode_sample", lambda key, *a, **k: decoded.append(key) or real_decode(key, *a, **k)
    )
    tail = take(reader, 5)
    assert_same(full[7:], tail)
    assert len(decoded) == 5 * 4  # exactly the samples served, none before the position


def test_corrupt_shard_names_the_file(tmp_path, write_shards):
    root = write_shards(tmp_path / "shards", {"train": 2}, per_shard=8)
    bad = load_manifest(root).shard_paths(root, "train")[1]
    bad.write_bytes(bad.read_bytes()[:700])  # truncated mid-member
    for workers in (0, 1):
        reader = PretrainBatches(root, "train", micro_batch_size=4, num_workers=workers)
        with pytest.raises(DataError, match=rf"{bad.name}: corrupt or truncated shard"):
            take(reader, 8)


def test_sequences_longer_than_the_model_are_refused(synthetic_shards):
    with pytest.raises(DataError, match="max_position_embeddings 16"):
        PretrainBatches(synthetic_shards, "train", micro_batch_size=2, max_position_embeddings=16)


def test_static_masking_uses_one_draw_per_epoch(make_sample):
    sample = make_sample(np.random.default_rng(0), "k", dupe=2)
    for draw in (0, 1, 2):
        ids, labels = mask_static(sample, draw)
        positions = sample.masked_positions[draw % 2]
        assert np.array_equal(np.flatnonzero(labels != IGNORE_INDEX), np.sort(positions))
        assert np.array_equal(labels[positions], sample.input_ids[positions])
        assert np.all(ids[positions] == MASK_ID)
        keep = np.setdiff1d(np.arange(len(ids)), positions)
        assert np.array_equal(ids[keep], sample.input_ids[keep])


def test_dynamic_masking_statistics(make_sample):
    """15% of non-special tokens are chosen; of those 80% [MASK], 10% random, 10% unchanged."""
    rng = np.random.default_rng(0)
    vocab = SPECIAL.masking_vocab()
    chosen = total = masked = randomised = kept = 0
    for i in range(3000):
        sample = make_sample(rng, f"s{i}", max_len=64)
        ids, labels = mask_dynamic(sample, rng, vocab, 0.15)
        original = sample.input_ids
        special = (original == CLS_ID) | (original == SEP_ID)
        positions = np.flatnonzero(labels != IGNORE_INDEX)
        assert not special[positions].any()
        assert np.array_equal(labels[positions], original[positions])
        assert np.array_equal(ids[~np.isin(np.arange(len(ids)), positions)], original[labels == IGNORE_INDEX])
        total += int((~special).sum())
        chosen += len(positions)
        masked += int((ids[positions] == MASK_ID).sum())
        changed = (ids[positions] != MASK_ID) & (ids[positions] != original[positions])
        randomised += int(changed.sum())
        kept += int((ids[positions] == original[positions]).sum())
        assert np.all(ids[positions][changed] >= NUM_SPECIAL_TOKENS)
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.015)
    # a random draw can hit the original id (1/91 of the time): it then counts as kept
    assert randomised / chosen == pytest.approx(0.1 * (1 - 1 / 91), abs=0.012)
    assert kept / chosen == pytest.approx(0.1 + 0.1 / 91, abs=0.012)


def test_dynamic_masks_differ_by_epoch_and_repeat_within_one(synthetic_shards):
    reader = PretrainBatches(synthetic_shards, "train", micro_batch_size=4, masking="dynamic")
    sample = next(read_shard(reader.shards[0]))
    a0, b0 = reader.example(sample, 0), reader.example(sample, 0)
    a1 = reader.example(sample, 1)
    assert np.array_equal(a0[1], b0[1])
    assert not np.array_equal(a0[1], a1[1])


def test_collate_pads_with_hf_keys(make_sample):
    rng = np.random.default_rng(1)
    samples = [make_sample(rng, f"k{i}") for i in range(3)]
    batch = collate([(*mask_static(s, 0), s.token_type_ids, s.next_sentence_label) for s in samples], 0)
    longest = max(s.num_tokens for s in samples)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"}
    assert batch["input_ids"].shape == (3, longest)
    for i, s in enumerate(samples):
        n = s.num_tokens
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][i, n:].eq(0).all() and batch["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert batch["token_type_ids"][i, :n].tolist() == s.token_type_ids.tolist()
    assert batch["next_sentence_label"].tolist() == [s.next_sentence_label for s in samples]


def test_eval_batches_are_equal_per_rank_and_disjoint(tmp_path: Path, write_shards):
    root = write_shards(tmp_path / "shards", {"train": 1, "validation": 2}, per_shard=10)
    per_rank = [
        eval_batches(root, "validation", micro_batch_size=3, rank=r, world_size=2, max_batches=9)
        for r in (0, 1)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 3  # 20 samples -> 3 full global batches of 6
    rows = {tuple(b["input_ids"][i].tolist()) for batches in per_rank for b in batches for i in range(3)}
    assert len(rows) == 18


def test_a_small_eval_split_is_shared_in_smaller_batches(tmp_path: Path, write_shards):
    root = write_shards(tmp_path / "shards", {"train": 1, "validation": 1}, per_shard=5)
    per_rank = [
        eval_batches(root, "validation", micro_batch_size=8, rank=r, world_size=2, max_batches=4)
        for r in (0, 1)
    ]
    assert [[b["input_ids"].shape[0] for b in batches] for batches in per_rank] == [[2], [2]]
