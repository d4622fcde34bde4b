"""WebDataset tar shards and manifest.json; every file lands atomically (temp + rename).

Workers serialise each sample straight into its tar records (headers + npy members), so the
driver only slices and concatenates bytes. Tars are byte-reproducible: members in sample order,
zero mtimes/uids, fixed modes, so the sha256 in the manifest is the same for the same seed
however many workers ran. ``npy_bytes`` and ``tar_header`` produce exactly what ``np.save`` and
``tarfile`` would (pinned by tests) at a fraction of the cost, which matters at ~5 members per sample.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertscale.atomic import atomic_write, atomic_write_text
from bertscale.errors import DataError
from data_pipeline.schema import (
    ARRAY_FIELDS,
    LABEL_FIELD,
    MANIFEST_NAME,
    Manifest,
    Sample,
    ShardInfo,
    SplitInfo,
    shard_name,
)

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # tarfile pads archives to 20 blocks


@functools.lru_cache(maxsize=4096)
def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"  # data starts 64-byte aligned
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1")


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save(f, array, allow_pickle=False)`` bytes (format 1.0) for a C-contiguous array."""
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()


def _header_template() -> tuple[bytes, int]:
    """Every field but name, size and checksum; and the byte sum of those fixed fields."""
    header = bytearray(BLOCK)
    header[100:124] = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
    header[136:148] = b"00000000000\x00"  # mtime
    header[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC
    return bytes(header), sum(header)


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def tar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile`` writes for a regular file: mode 0644, uid/gid 0, mtime 0."""
    raw = name.encode("utf-8")
    if len(raw) > 100:  # needs the prefix field: rare, let tarfile do it
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return _header(raw, sum(raw), size)


def _header(raw_name: bytes, name_sum: int, size: int) -> bytes:
    size_field = b"%011o\x00" % size
    checksum = _TEMPLATE_SUM + name_sum + sum(size_field)
    t = _TEMPLATE
    return raw_name + t[len(raw_name) : 124] + size_field + t[136:148] + b"%06o\x00" % checksum + t[155:]


_ARRAY_SUFFIXES = [(f".{name}.npy".encode(), name, dtype) for name, dtype in ARRAY_FIELDS.items()]
_LABEL_SUFFIX = f".{LABEL_FIELD}.txt".encode()
_LONGEST_SUFFIX = max(len(_LABEL_SUFFIX), *(len(s) for s, _, _ in _ARRAY_SUFFIXES))


def sample_records(sample: Sample) -> bytes:
    """One sample's tar members (same bytes as ``schema.encode_sample`` put through ``tarfile``)."""
    key = sample.key.encode("utf-8")
    members = [
        (suffix, npy_bytes(np.ascontiguousarray(getattr(sample, name), dtype)))
        for suffix, name, dtype in _ARRAY_SUFFIXES
    ]
    members.append((_LABEL_SUFFIX, b"%d" % sample.next_sentence_label))
    if len(key) + _LONGEST_SUFFIX > 100:
        names = [(key + suffix).decode() for suffix, _ in members]
        return b"".join(
            tar_header(n, len(d)) + d + b"\0" * (-len(d) % BLOCK)
            for n, (_, d) in zip(names, members, strict=False)
        )
    key_sum = sum(key)
    parts = []
    for suffix, data in members:
        header = _header(key + suffix, key_sum + _byte_sum(suffix), len(data))
        parts += [header, data, b"\0" * (-len(data) % BLOCK)]
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _byte_sum(raw: bytes) -> int:
    return sum(raw)


def rekey_records(records: bytes, key: str) -> bytes:
    """The same members under a new key (for the repeats that pad the last shard)."""
    parts = []
    with tarfile.open(fileobj=io.BytesIO(records + b"\0" * (2 * BLOCK)), mode="r:") as tar:
        for info in tar:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            suffix = info.name.partition(".")[2]
            parts += [tar_header(f"{key}.{suffix}", len(data)), data, b"\0" * (-len(data) % BLOCK)]
    return b"".join(parts)


@dataclass
class SampleBatch:
    """Serialised samples back to back in one buffer (one cheap object to ship between processes)."""

    blob: bytes
    offsets: np.ndarray  # (n + 1,) int64 into blob
    keys: list[str]
    doc_ids: np.ndarray  # (n,) int64
    num_tokens: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) uint8 next_sentence_label

    @classmethod
    def from_samples(cls, samples: list[Sample], doc_ids: list[int]) -> SampleBatch:
        records = [sample_records(s) for s in samples]
        return cls(
            blob=b"".join(records),
            offsets=np.concatenate([[0], np.cumsum([len(r) for r in records])]).astype(np.int64),
            keys=[s.key for s in samples],
            doc_ids=np.asarray(doc_ids, dtype=np.int64),
            num_tokens=np.array([s.num_tokens for s in samples], dtype=np.int64),
            labels=np.array([s.next_sentence_label for s in samples], dtype=np.uint8),
        )

    @classmethod
    def concatenate(cls, batches: list[SampleBatch]) -> SampleBatch:
        starts = np.cumsum([0, *(len(b.blob) for b in batches[:-1])])
        return cls(
            blob=b"".join(b.blob for b in batches),
            offsets=np.concatenate([[0], *(b.offsets[1:] + s for b, s in zip(batches, starts, strict=True))]),
            keys=[k for b in batches for k in b.keys],
            doc_ids=np.concatenate([b.doc_ids for b in batches]),
            num_tokens=np.concatenate([b.num_tokens for b in batches]),
            labels=np.concatenate([b.labels for b in batches]),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def records(self, index: int) -> bytes:
        return self.blob[self.offsets[index] : self.offsets[index + 1]]


@dataclass
class ShardPlan:
    indices: np.ndarray  # samples of the batch, in shard order
    repeats_from: int  # positions from here on repeat earlier samples (remainder=pad)


def plan_shards(
    order: np.ndarray, samples_per_shard: int, remainder: str, split: str
) -> tuple[list[ShardPlan], int]:
    """Cut ``order`` into equal shards; the remainder is dropped, or padded with repeats from the start.

    Returns the shards and the number of dropped samples.
    """
    if len(order) == 0:
        return [], 0
    full, rest = divmod(len(order), samples_per_shard)
    size = samples_per_shard
    plans = [ShardPlan(order[i * size : (i + 1) * size], size) for i in range(full)]
    if rest and remainder == "pad":
        repeats = order[np.arange(samples_per_shard - rest) % len(order)]
        plans.append(ShardPlan(np.concatenate([order[full * samples_per_shard :], repeats]), rest))
        rest = 0
    if not plans:
        raise DataError(
            f"split '{split}' has {len(order)} samples, fewer than split.samples_per_shard="
            f"{samples_per_shard}: lower it, or set split.remainder=pad"
        )
    return plans, rest


def write_shard(path: Path, batch: SampleBatch, plan: ShardPlan) -> ShardInfo:
    parts = []
    for position, index in enumerate(plan.indices):
        records = batch.records(index)
        if position >= plan.repeats_from:
            records = rekey_records(records, f"{batch.keys[index]}_pad{position}")
        parts.append(records)
    data = b"".join(parts) + b"\0" * (2 * BLOCK)  # end-of-archive marker
    data += b"\0" * (-len(data) % RECORD)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return ShardInfo(
        name=path.name,
        samples=len(plan.indices),
        tokens=int(batch.num_tokens[plan.indices].sum()),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def write_split(
    root: Path, split: str, batch: SampleBatch, plans: list[ShardPlan], samples_per_shard: int
) -> SplitInfo:
    info = SplitInfo(samples_per_shard=samples_per_shard)
    for index, plan in enumerate(plans):
        info.shards.append(write_shard(root / shard_name(split, index), batch, plan))
    return info


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Written last: its presence means the dataset is complete."""
    atomic_write_text(root / MANIFEST_NAME, manifest.to_json())
