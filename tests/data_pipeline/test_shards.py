"""The fast serialisers match numpy and tarfile byte for byte; shard planning keeps shards equal."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bertscale.data_pipeline.schema import Sample, encode_sample, read_shard
from bertscale.data_pipeline.shards import SampleBatch, npy_bytes, plan_shards, tar_header, write_shard
from bertscale.errors import DataError


def make_sample(key: str, length: int, rng: np.random.Generator) -> Sample:
    ids = np.concatenate([[2], rng.integers(5, 900, length - 3), [3], rng.integers(5, 900, 1), [3]])
    return Sample(
        key=key,
        input_ids=ids.astype(np.int32),
        token_type_ids=np.r_[np.zeros(length - 1), np.ones(2)].astype(np.uint8),
        masked_positions=np.sort(rng.choice(np.arange(1, length - 2), (3, 4)), axis=1).astype(np.int16),
        masked_ids=rng.integers(4, 900, (3, 4)).astype(np.int32),
        next_sentence_label=int(rng.integers(2)),
    )


@pytest.mark.parametrize(
    "array",
    [np.arange(7, dtype=np.int32), np.zeros((5, 18), np.int16), np.zeros(0, np.uint8),
     np.ones((2, 0), np.int32), np.arange(100_000, dtype=np.int32)],
)  # fmt: skip
def test_npy_bytes_equal_np_save(array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    assert npy_bytes(array) == buf.getvalue()


@pytest.mark.parametrize(
    "name", ["a.npy", "d000000001p00002.masked_positions.npy", "x" * 100, "d" * 60 + "/" + "y" * 60]
)
@pytest.mark.parametrize("size", [0, 1, 511, 512, 10**9])
def test_tar_header_equals_tarfile(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    assert tar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def test_shard_round_trip_and_padding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [make_sample(f"d{i:09d}p00000", int(rng.integers(8, 40)), rng) for i in range(10)]
    batch = SampleBatch.from_samples(samples, list(range(10)))
    plans, dropped = plan_shards(np.arange(10)[::-1], 4, "pad", "train")
    assert dropped == 0 and [len(p.indices) for p in plans] == [4, 4, 4]
    infos = [write_shard(tmp_path / f"train-{i:06d}.tar", batch, p) for i, p in enumerate(plans)]
    decoded = [s for i in range(3) for s in read_shard(tmp_path / f"train-{i:06d}.tar")]
    expected = [samples[i] for i in [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8]]
    assert [s.key for s in decoded[:10]] == [s.key for s in expected[:10]]
    assert [s.key for s in decoded[10:]] == ["d000000009p00000_pad2", "d000000008p00000_pad3"]
    for got, want in zip(decoded, expected, strict=True):
        assert encode_sample(got) == encode_sample(want)
    assert infos[0].tokens == sum(s.num_tokens for s in expected[:4])
    assert all((tmp_path / i.name).stat().st_size % tarfile.RECORDSIZE == 0 for i in infos)
    # the tar members are exactly what schema.encode_sample defines
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        first = {
            m.name.partition(".")[2]: tar.extractfile(m).read()
            for m in tar
            if m.name.startswith(samples[9].key)
        }
    assert first == encode_sample(samples[9])


def test_plan_shards_drop_and_too_few() -> None:
    plans, dropped = plan_shards(np.arange(10), 4, "drop", "train")
    assert [p.indices.tolist() for p in plans] == [[0, 1, 2, 3], [4, 5, 6, 7]] and dropped == 2
    with pytest.raises(
        DataError, match=r"split 'validation' has 3 samples, fewer than split\.samples_per_shard=4"
    ):
        plan_shards(np.arange(3), 4, "drop", "validation")
    assert plan_shards(np.arange(0), 4, "drop", "validation") == ([], 0)


def test_vectorised_records_equal_tarfile(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = [f"d{i:09d}p{i % 3:05d}" for i in range(7)] + ["a-much-longer-key-" * 3]
    samples = [make_sample(k, int(rng.integers(4, 300)), rng) for k in keys]
    batch = SampleBatch.from_samples(samples, list(range(len(samples))))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for suffix, data in encode_sample(s).items():
                info = tarfile.TarInfo(f"{s.key}.{suffix}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    ours = b"".join(bytes(batch.records(i)) for i in range(len(samples))) + b"\0" * 1024
    ours += b"\0" * (-len(ours) % tarfile.RECORDSIZE)
    assert ours == buf.getvalue()
    # concatenating batches keeps every sample's bytes
    both = SampleBatch.concatenate([batch, SampleBatch.from_samples(samples[:2], [0, 1])])
    assert len(both) == len(samples) + 2
    assert bytes(both.records(len(samples) + 1)) == bytes(batch.records(1))


def test_webdataset_reads_our_shards_unchanged(tmp_path: Path) -> None:
    """The shards are plain WebDataset: the library sees every sample, arrays equal to our reader's."""
    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(4)
    samples = [make_sample(f"d{i:09d}p{i % 2:05d}", int(rng.integers(8, 200)), rng) for i in range(9)]
    batch = SampleBatch.from_samples(samples, list(range(9)))
    plans, _ = plan_shards(rng.permutation(9), 4, "pad", "train")  # the last shard pads with repeats
    paths = [tmp_path / f"train-{i:06d}.tar" for i in range(len(plans))]
    for path, plan in zip(paths, plans, strict=True):
        write_shard(path, batch, plan)
    ours = [s for p in paths for s in read_shard(p)]
    theirs = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False).decode())
    assert len(theirs) == len(ours) == 12
    for got, want in zip(theirs, ours, strict=True):
        assert got["__key__"] == want.key
        assert set(got) - {"__key__", "__url__", "__local_path__"} == set(encode_sample(want))
        for name in ("input_ids", "token_type_ids", "masked_positions", "masked_ids"):
            array = got[f"{name}.npy"]
            assert array.dtype == getattr(want, name).dtype
            np.testing.assert_array_equal(array, getattr(want, name))
        assert int(got["next_sentence_label.txt"]) == want.next_sentence_label
