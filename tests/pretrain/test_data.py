"""The input path: the global sample sequence (any world size, accumulation, workers), O(1) resume,
whole-shard reading and its checks, batch masking statistics, collate, bad shards."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import bertscale.pretrain.data as data
from bertscale.data_pipeline.schema import encode_sample, load_manifest, load_shard, read_shard
from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.errors import DataError
from bertscale.model import UnpadIndices
from bertscale.pretrain.data import (
    IGNORE_INDEX,
    PretrainBatches,
    batch_width,
    collate,
    eval_batches,
    mask_batch,
    mask_static,
)

VOCAB_SIZE = 96  # of the synthetic shards (conftest)
SPECIAL = trained_special(VOCAB_SIZE)  # the synthetic shards' layout (conftest)
CLS_ID, SEP_ID, MASK_ID, NUM_SPECIAL_TOKENS = SPECIAL.cls_id, SPECIAL.sep_id, SPECIAL.mask_id, 5


def take(reader: PretrainBatches, n: int) -> list[dict[str, torch.Tensor]]:
    return list(itertools.islice(iter(reader), n))


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        for key in x:
            assert same_value(x[key], y[key]), f"batch {i} differs in {key}"


def same_value(x: torch.Tensor | UnpadIndices, y: torch.Tensor | UnpadIndices) -> bool:
    if isinstance(x, UnpadIndices):
        return all(same_value(getattr(x, f), getattr(y, f)) for f in vars(x))
    return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


def by_step(root: Path, steps: int, world: int, accumulation: int, workers: int, **kw) -> dict:
    """(step, micro batch u) -> batch, gathered from every rank's stream as training would consume it."""
    out = {}
    for rank in range(world):
        reader = PretrainBatches(
            root, "train", rank=rank, world_size=world, gradient_accumulation_steps=accumulation,
            num_workers=workers, **kw,
        )  # fmt: skip
        for t, batch in enumerate(take(reader, steps * accumulation)):
            out[reader.micro_batch(t)] = batch
    return out


def rewrite_shard(path: Path, change) -> None:
    """Re-encode ``path`` with ``change(index, sample)`` applied to each sample (a real tar again)."""
    samples = list(read_shard(path))
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            change(i, sample)
            for suffix, blob in encode_sample(sample).items():
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))


# --- the global sample sequence --------------------------------------------------------------------


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_steps_do_not_depend_on_world_size_accumulation_or_workers(synthetic_shards, masking):
    """A global batch of 4 micro batches: 1 rank x 4, 2 ranks x 2 (2 workers each), 4 ranks x 1."""
    kw = dict(micro_batch_size=3, masking=masking, seed=3)
    reference = by_step(synthetic_shards, 6, world=1, accumulation=4, workers=0, **kw)
    assert sorted(reference) == [(s, u) for s in range(6) for u in range(4)]
    for world, accumulation, workers in ((2, 2, 2), (4, 1, 1)):
        got = by_step(synthetic_shards, 6, world, accumulation, workers, **kw)
        assert sorted(got) == sorted(reference)
        assert_same([got[k] for k in sorted(got)], [reference[k] for k in sorted(reference)])
    assert not torch.equal(reference[0, 0]["input_ids"], reference[0, 1]["input_ids"])


def test_an_epoch_serves_every_sample_once_then_reshuffles(synthetic_shards):
    """4 shards x 16 samples, global batch 4 x 4: four steps are one epoch (sample ids asserted)."""
    reader = PretrainBatches(synthetic_shards, "train", micro_batch_size=4, gradient_accumulation_steps=4)
    epoch = [reader.read(s, u)[1] for s in range(4) for u in range(4)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(64))
    second = [reader.read(s, u)[1] for s in range(4, 8) for u in range(4)]
    assert sorted(np.concatenate(second).tolist()) == list(range(64))
    assert np.concatenate(second).tolist() != np.concatenate(epoch).tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_a_step_continues_with_the_same_batches(synthetic_shards, workers):
    kw = dict(
        micro_batch_size=6, num_workers=workers, masking="dynamic", seed=1, gradient_accumulation_steps=2
    )
    full = take(PretrainBatches(synthetic_shards, "train", **kw), 16)  # crosses an epoch boundary
    tail = take(PretrainBatches(synthetic_shards, "train", start_step=3, **kw), 10)
    assert_same(full[6:], tail)


def test_resume_opens_only_the_shards_it_needs(tmp_path, monkeypatch, write_shards):
    """O(1) resume: shards consumed before the step are never opened (garbage there is harmless)."""
    root = write_shards(tmp_path / "shards", {"train": 6}, per_shard=10)
    kw = dict(micro_batch_size=4, seed=5)
    full = take(PretrainBatches(root, "train", **kw), 12)
    reader = PretrainBatches(root, "train", start_step=7, **kw)  # 28 samples: entries 0, 1 consumed
    for cursor in (0, 1):
        reader.shard_at(cursor).write_bytes(b"not a tar file" * 100)
    opened = []
    real = data.load_shard
    monkeypatch.setattr(data, "load_shard", lambda path, **k: opened.append(path.name) or real(path, **k))
    assert_same(full[7:], take(reader, 5))
    assert opened == [reader.shard_at(c).name for c in (2, 3, 4)]  # samples 28-47


def test_sample_log_records_step_micro_batch_and_ids(synthetic_shards, tmp_path):
    log = tmp_path / "run" / "samples.jsonl"  # a rank may write before rank 0 made the run dir
    reader = PretrainBatches(
        synthetic_shards, "train", micro_batch_size=4, world_size=2, rank=1, sample_log=log
    )
    take(reader, 3)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["step"], r["micro"]) for r in records] == [(1, 1), (2, 1), (3, 1)]
    assert records[0]["samples"] == reader.read(0, 1)[1].tolist()


def test_sequences_longer_than_the_model_are_refused(synthetic_shards):
    with pytest.raises(DataError, match="max_position_embeddings 16"):
        PretrainBatches(synthetic_shards, "train", micro_batch_size=2, max_position_embeddings=16)


# --- whole-shard reading and its checks ----------------------------------------------------------


def test_load_shard_holds_what_read_shard_decodes(synthetic_shards):
    for path in load_manifest(synthetic_shards).shard_paths(synthetic_shards, "train"):
        arrays = load_shard(path, vocab_size=VOCAB_SIZE, expected_samples=16)
        for i, sample in enumerate(read_shard(path)):
            a, b = arrays.offsets[i], arrays.offsets[i + 1]
            m0, m1 = arrays.mask_offsets[i], arrays.mask_offsets[i + 1]
            assert arrays.keys[i] == sample.key
            assert np.array_equal(arrays.input_ids[a:b], sample.input_ids)
            assert np.array_equal(arrays.token_type_ids[a:b], sample.token_type_ids)
            assert np.array_equal(arrays.masked_positions[m0:m1], sample.masked_positions.ravel())
            assert np.array_equal(arrays.masked_ids[m0:m1], sample.masked_ids.ravel())
            assert arrays.mask_draws[i] == sample.masked_positions.shape[0]
            assert arrays.next_sentence_label[i] == sample.next_sentence_label


def test_webdataset_reads_the_shards_unchanged(synthetic_shards):
    wds = pytest.importorskip("webdataset")
    path = load_manifest(synthetic_shards).shard_paths(synthetic_shards, "train")[0]
    records = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    arrays = load_shard(path, vocab_size=VOCAB_SIZE)
    assert [r["__key__"] for r in records] == arrays.keys
    for i, r in enumerate(records):
        assert np.array_equal(r["input_ids.npy"], arrays.input_ids[arrays.offsets[i] : arrays.offsets[i + 1]])


def test_static_batches_apply_the_epochs_draw(synthetic_shards):
    reader = PretrainBatches(synthetic_shards, "train", micro_batch_size=4, gradient_accumulation_steps=4)
    samples = {
        i * 16 + j: s
        for i, p in enumerate(load_manifest(synthetic_shards).shard_paths(synthetic_shards, "train"))
        for j, s in enumerate(read_shard(p))
    }
    for step in (0, 5):  # epochs 0 and 1: draws 0 and 1
        batch, ids = reader.read(step, 2)
        for row, sample_id in enumerate(ids):
            masked, labels = mask_static(samples[int(sample_id)], draw=step // 4)
            n = len(masked)
            assert batch["input_ids"][row, :n].tolist() == masked.tolist()
            assert batch["labels"][row, :n].tolist() == labels.tolist()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.input_ids.__setitem__(2, 500), "token id outside the manifest vocab"),
        (lambda s: s.token_type_ids.__setitem__(1, 7), "token type other than 0/1"),
        (lambda s: s.masked_ids.__setitem__((0, 0), 96), "masked id outside the manifest vocab"),
    ],
)
def test_out_of_range_values_fail_naming_shard_and_sample(tmp_path, write_shards, change, problem):
    root = write_shards(tmp_path / "shards", {"train": 2}, per_shard=8)
    bad = load_manifest(root).shard_paths(root, "train")[1]
    rewrite_shard(bad, lambda i, s: change(s) if i == 3 else None)
    reader = PretrainBatches(root, "train", micro_batch_size=4, gradient_accumulation_steps=2)
    with pytest.raises(DataError) as err:
        take(reader, 8)
    assert str(err.value).startswith(f"{bad}: sample 'train001_00003' has a {problem}")
    assert "\n" not in str(err.value)


def test_sample_count_is_checked_against_the_manifest(tmp_path, write_shards):
    root = write_shards(tmp_path / "shards", {"train": 2}, per_shard=8)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["samples"] = 9
    manifest["splits"]["train"]["shards"][1]["samples"] = 9
    manifest["splits"]["train"]["samples_per_shard"] = 9
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="holds 8 samples, the manifest says 9"):
        take(PretrainBatches(root, "train", micro_batch_size=4), 1)


def test_corrupt_shard_names_the_file(tmp_path, write_shards):
    root = write_shards(tmp_path / "shards", {"train": 2}, per_shard=8)
    bad = load_manifest(root).shard_paths(root, "train")[1]
    bad.write_bytes(bad.read_bytes()[:700])  # truncated mid-member
    for workers in (0, 1):
        reader = PretrainBatches(root, "train", micro_batch_size=4, num_workers=workers)
        with pytest.raises(DataError, match=rf"{bad.name}: corrupt or truncated shard"):
            take(reader, 8)


def test_skip_one_bad_shard_of_two_across_epochs(tmp_path, write_shards):
    """The good shard stands in for the bad one, every epoch; the bad one is counted once."""
    root = write_shards(tmp_path / "shards", {"train": 2}, per_shard=8)
    good, bad = load_manifest(root).shard_paths(root, "train")
    rewrite_shard(bad, lambda i, s: s.input_ids.__setitem__(1, 999))
    for workers in (0, 2):
        reader = PretrainBatches(
            root, "train", micro_batch_size=4, num_workers=workers, on_corrupt_shard="skip"
        )
        seen = take(reader, 20)  # 5 epochs
        assert len(seen) == 20 and reader.skipped == {bad.name}
        assert all(b["input_ids"].max() < VOCAB_SIZE for b in seen)
    assert {int(i) // 8 for s in range(10) for i in reader.read(s, 0)[1]} == {0}  # only the good shard

    good.write_bytes(good.read_bytes()[:700])  # nothing left to read: an error, not an endless loop
    endless = PretrainBatches(root, "train", micro_batch_size=4, on_corrupt_shard="skip")
    with pytest.raises(DataError, match="all 2 shards of the split are corrupt"):
        take(endless, 1)


# --- masking and collate -------------------------------------------------------------------------


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


def test_batch_masking_statistics(make_sample):
    """15% of non-special tokens are chosen; of those 80% [MASK], 10% random, 10% unchanged."""
    rng = np.random.default_rng(0)
    vocab = trained_special(VOCAB_SIZE).masking_vocab()
    chosen = total = masked = randomised = kept = 0
    for b in range(150):
        samples = [make_sample(rng, f"s{b}_{i}", max_len=64) for i in range(20)]
        lengths = np.array([s.num_tokens for s in samples])
        width = int(lengths.max())
        original = np.zeros((len(samples), width), np.int64)
        for i, s in enumerate(samples):
            original[i, : s.num_tokens] = s.input_ids
        ids, labels = mask_batch(original, rng, vocab, 0.15)
        special = original < NUM_SPECIAL_TOKENS
        chosen_mask = labels != IGNORE_INDEX
        assert not (special & chosen_mask).any()
        assert np.array_equal(labels[chosen_mask], original[chosen_mask])
        assert np.array_equal(ids[~chosen_mask], original[~chosen_mask])
        n = (~special).sum(1)
        assert np.array_equal(chosen_mask.sum(1), np.maximum(1, np.round(0.15 * n)))
        total += int(n.sum())
        chosen += int(chosen_mask.sum())
        picked, before = ids[chosen_mask], original[chosen_mask]
        masked += int((picked == MASK_ID).sum())
        changed = (picked != MASK_ID) & (picked != before)
        randomised += int(changed.sum())
        kept += int((picked == before).sum())
        assert np.all(picked[changed] >= NUM_SPECIAL_TOKENS)
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.015)
    # a random draw can hit the original id (1/91 of the time): it then counts as kept
    assert randomised / chosen == pytest.approx(0.1 * (1 - 1 / 91), abs=0.012)
    assert kept / chosen == pytest.approx(0.1 + 0.1 / 91, abs=0.012)
    assert CLS_ID < NUM_SPECIAL_TOKENS and SEP_ID < NUM_SPECIAL_TOKENS


def test_dynamic_masks_are_drawn_from_seed_step_and_micro_batch(synthetic_shards):
    """Micro batch u of step s is masked by one generator seeded (seed, s, u), whoever reads it."""
    reader = PretrainBatches(synthetic_shards, "train", micro_batch_size=4, masking="dynamic", seed=2)
    rows = {
        i * 16 + j: s.input_ids
        for i, p in enumerate(load_manifest(synthetic_shards).shard_paths(synthetic_shards, "train"))
        for j, s in enumerate(read_shard(p))
    }
    for step in (0, 5, 9):
        batch, ids = reader.read(step, 0)
        original = np.zeros(tuple(batch["input_ids"].shape), np.int64)
        for row, sample_id in enumerate(ids):
            original[row, : len(rows[int(sample_id)])] = rows[int(sample_id)]
        masked, labels = mask_batch(original, np.random.default_rng([2, step, 0]), reader.vocab, 0.15)
        assert batch["input_ids"].tolist() == masked.tolist()
        assert batch["labels"].tolist() == labels.tolist()


def test_collate_pads_with_hf_keys(make_sample):
    rng = np.random.default_rng(1)
    samples = [make_sample(rng, f"k{i}") for i in range(3)]
    lengths = np.array([s.num_tokens for s in samples])
    longest = int(lengths.max())
    padded = np.zeros((3, longest), np.int64)
    types = np.zeros((3, longest), np.int64)
    for i, s in enumerate(samples):
        padded[i, : s.num_tokens], types[i, : s.num_tokens] = s.input_ids, s.token_type_ids
    labels = np.full_like(padded, IGNORE_INDEX)
    batch = collate(padded, types, lengths, labels, np.array([s.next_sentence_label for s in samples]))
    assert set(batch) == {
        "input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label", "unpad_indices"
    }  # fmt: skip
    assert batch["input_ids"].shape == (3, longest) and batch["input_ids"].dtype == torch.long
    for i, s in enumerate(samples):
        n = s.num_tokens
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][i, n:].eq(0).all() and batch["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert batch["token_type_ids"][i, :n].tolist() == s.token_type_ids.tolist()
    assert batch["next_sentence_label"].tolist() == [s.next_sentence_label for s in samples]
    # the model's unpadding indices, computed here on the host (the model would otherwise sync on a GPU)
    want = UnpadIndices.build(batch["attention_mask"], batch["labels"] != IGNORE_INDEX)
    assert same_value(batch["unpad_indices"], want)
    assert batch["unpad_indices"].cu_seqlens.tolist() == [0, *np.cumsum(lengths).tolist()]
    assert batch["unpad_indices"].max_seqlen == longest


def test_batch_width_rounds_up_to_the_multiple_within_the_positions():
    assert batch_width(np.array([5, 13, 9])) == 13
    assert batch_width(np.array([5, 13, 9]), 8) == 16
    assert batch_width(np.array([5, 16]), 8) == 16
    assert batch_width(np.array([100, 3]), 64, max_position_embeddings=120) == 120  # not 128
    assert batch_width(np.array([130]), 64, max_position_embeddings=120) == 130  # refused elsewhere


def test_pad_to_multiple_of_changes_only_the_padding(synthetic_shards):
    kw = dict(micro_batch_size=4, masking="dynamic", seed=3)
    plain = take(PretrainBatches(synthetic_shards, "train", **kw), 6)
    padded = take(PretrainBatches(synthetic_shards, "train", pad_to_multiple_of=8, **kw), 6)
    assert any(b["input_ids"].shape[1] % 8 for b in plain)  # the shards have lengths to round up
    for a, b in zip(plain, padded, strict=True):
        width = a["input_ids"].shape[1]
        assert b["input_ids"].shape[1] == -(-width // 8) * 8
        for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
            assert torch.equal(b[key][:, :width], a[key]), key
        assert not b["attention_mask"][:, width:].any() and (b["labels"][:, width:] == IGNORE_INDEX).all()
        assert torch.equal(b["unpad_indices"].cu_seqlens, a["unpad_indices"].cu_seqlens)
        assert torch.equal(b["unpad_indices"].masked_positions % b["input_ids"].shape[1],
                           a["unpad_indices"].masked_positions % width)  # fmt: skip



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
