"""WebDataset tar shards and manifest.json; every file lands atomically (temp + rename).

Workers serialise a whole block of samples into tar records (headers + npy members) with numpy
(:func:`_records`: no per-sample Python) and spill them to a file (:class:`RecordFile`); shard
tasks read back one shard's records at a time and join them. Tars are
byte-reproducible: members in sample order, zero mtimes/uids, fixed modes, so the sha256 in the
manifest is the same for the same seed however many workers ran. The records are exactly what
``schema.encode_sample`` put through ``tarfile`` gives (pinned by tests); ``npy_bytes`` and
``tar_header`` do the same for one array or member (the headers, and the padding repeats).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertscale.atomic import atomic_write, atomic_write_text
from bertscale.data_pipeline.instances import SampleArrays
from bertscale.data_pipeline.schema import (
    ARRAY_FIELDS,
    LABEL_FIELD,
    MANIFEST_NAME,
    Manifest,
    Sample,
    ShardInfo,
    SplitInfo,
    shard_name,
)
from bertscale.errors import DataError

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


def rekey_records(records: bytes, key: str) -> bytes:
    """The same members under a new key (for the repeats that pad the last shard)."""
    parts = []
    with tarfile.open(fileobj=io.BytesIO(records + b"\0" * (2 * BLOCK)), mode="r:") as tar:
        for info in tar:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            suffix = info.name.partition(".")[2]
            parts += [tar_header(f"{key}.{suffix}", len(data)), data, b"\0" * (-len(data) % BLOCK)]
    return b"".join(parts)


def _octal(values: np.ndarray, digits: int) -> np.ndarray:
    """(n,) ints → (n, digits) ASCII octal, zero-padded (what ``b"%0*o" % value`` writes)."""
    shifts = 3 * np.arange(digits - 1, -1, -1)
    return ((values[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def _npy_headers(descr: str, shapes: list[tuple[int, ...]]) -> np.ndarray:
    """(n, h) uint8: the npy header of each shape (all of one length: checked)."""
    unique = sorted(set(shapes))
    table = [_npy_header(descr, s) for s in unique]
    if len({len(h) for h in table}) > 1:
        raise ValueError(f"npy headers of unequal length for shapes {unique}")
    index = {s: i for i, s in enumerate(unique)}
    rows = np.frombuffer(b"".join(table), np.uint8).reshape(len(table), -1)
    return rows[[index[s] for s in shapes]]


def _records(arrays: SampleArrays) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's tar members at once → (blob, (n + 1,) offsets).

    Each sample gets a fixed grid of 512-byte blocks: per member one header block and room for
    its largest payload. Payloads are poured in with boolean masks; the blocks a sample does not
    use are then dropped in one selection, which leaves exactly the tar byte stream (members in
    order, each padded to a block), with no per-sample Python.
    """
    n, draws = len(arrays), arrays.dupe_factor
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    t, m = arrays.lengths, arrays.num_predictions
    per_token = ([(x,) for x in t.tolist()], t)  # (shape, elements) of each sample's array
    per_draw = ([(draws, x) for x in m.tolist()], draws * m)
    layout = {"input_ids": per_token, "token_type_ids": per_token}
    layout |= {"masked_positions": per_draw, "masked_ids": per_draw}
    # (header rows, flat payload bytes, payload bytes per sample) per member, in ARRAY_FIELDS order
    payloads = []
    for name, dtype in ARRAY_FIELDS.items():
        shapes, elements = layout[name]
        stored = dtype.newbyteorder("<")  # what np.save writes on a little-endian host
        data = getattr(arrays, name).astype(stored).view(np.uint8)
        payloads.append((_npy_headers(stored.str, shapes), data, stored.itemsize * elements))
    sizes = [h.shape[1] + nbytes for h, _, nbytes in payloads] + [np.ones(n, np.int64)]
    slots = [-(-int(s.max(initial=0)) // BLOCK) for s in sizes]  # payload blocks reserved per member
    first_block = np.cumsum([0, *(1 + s for s in slots)])  # where each member's header block sits
    grid = np.zeros((n, int(first_block[-1]), BLOCK), np.uint8)
    used = np.zeros(grid.shape[:2], bool)

    names = np.array([k.encode() for k in arrays.keys], dtype="S")  # NUL-padded, as the name field is
    name_sums = names.view(np.uint8).reshape(n, -1).sum(axis=1, dtype=np.int64)
    for member, (suffix, size) in enumerate(zip(_MEMBER_SUFFIXES, sizes, strict=True)):
        block = first_block[member]
        member_names = np.char.add(names, suffix).view(np.uint8).reshape(n, -1)
        if member_names.shape[1] > 100:
            raise ValueError("sample keys longer than tar's 100-byte name field")
        header = grid[:, block]
        header[:] = np.frombuffer(_TEMPLATE, np.uint8)
        header[:, : member_names.shape[1]] = member_names
        header[:, 124:135] = size_digits = _octal(size, 11)
        # summed with its own field as spaces (the template's), over fixed fields, name and size
        checksum = _TEMPLATE_SUM + name_sums + _byte_sum(suffix) + size_digits.sum(axis=1, dtype=np.int64)
        header[:, 148:154] = _octal(checksum, 6)
        header[:, 154] = 0
        used[:, block] = True
        used[:, block + 1 : block + 1 + slots[member]] = np.arange(slots[member]) < -(-size[:, None] // BLOCK)
    for member, (npy_header, data, nbytes) in enumerate(payloads):
        body = grid[:, first_block[member] + 1 : first_block[member + 1]].reshape(n, -1)
        h = npy_header.shape[1]
        body[:, :h] = npy_header
        column = np.arange(body.shape[1] - h)
        body[:, h:][column < nbytes[:, None]] = data
    grid[:, first_block[len(ARRAY_FIELDS)] + 1, 0] = ord("0") + arrays.next_sentence_label
    return grid[used].reshape(-1), np.concatenate([[0], np.cumsum(used.sum(axis=1) * BLOCK)]).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _byte_sum(raw: bytes) -> int:
    return sum(raw)


_MEMBER_SUFFIXES = [f".{name}.npy".encode() for name in ARRAY_FIELDS] + [f".{LABEL_FIELD}.txt".encode()]


class RecordFile:
    """Tar records a worker spilled to disk; a shard task reads one sample at a time with pread
    (no mapping, so its memory holds one shard, whatever the dataset)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd: int | None = None

    def read(self, start: int, end: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path, "_fd": None}  # a descriptor means nothing in another process


@dataclass
class SampleBatch:
    """Serialised samples in a few big buffers, in memory or spilled to files (cheap to ship
    between processes; joining the buffers would copy the whole dataset once more, so they stay
    apart). Keys are not kept: they are in the records."""

    blobs: list[np.ndarray | RecordFile]  # tar members of consecutive samples, back to back
    blob_index: np.ndarray  # (n,) which blob holds each sample
    spans: np.ndarray  # (n, 2) int64 start, end in that blob
    doc_ids: np.ndarray  # (n,) int64
    num_tokens: np.ndarray  # (n,) int64
    labels: np.ndarray  # (n,) uint8 next_sentence_label

    @classmethod
    def from_arrays(cls, arrays: SampleArrays) -> SampleBatch:
        blob, offsets = _records(arrays)
        return cls(
            blobs=[blob],
            blob_index=np.zeros(len(arrays), np.int64),
            spans=np.stack([offsets[:-1], offsets[1:]], axis=1),
            doc_ids=arrays.doc_ids,
            num_tokens=arrays.lengths.astype(np.int64),
            labels=arrays.next_sentence_label,
        )

    @classmethod
    def from_samples(cls, samples: list[Sample], doc_ids: list[int]) -> SampleBatch:
        return cls.from_arrays(SampleArrays.from_samples(samples, doc_ids))

    @classmethod
    def concatenate(cls, batches: list[SampleBatch]) -> SampleBatch:
        first_blob = np.cumsum([0, *(len(b.blobs) for b in batches)])[:-1]
        return cls(
            blobs=[blob for b in batches for blob in b.blobs],
            blob_index=np.concatenate(
                [np.zeros(0, np.int64), *(b.blob_index + f for b, f in zip(batches, first_blob, strict=True))]
            ),
            spans=np.concatenate([np.zeros((0, 2), np.int64), *(b.spans for b in batches)]),
            doc_ids=np.concatenate([np.zeros(0, np.int64), *(b.doc_ids for b in batches)]),
            num_tokens=np.concatenate([np.zeros(0, np.int64), *(b.num_tokens for b in batches)]),
            labels=np.concatenate([np.zeros(0, np.uint8), *(b.labels for b in batches)]),
        )

    def __len__(self) -> int:
        return len(self.doc_ids)

    def records(self, index: int) -> memoryview | bytes:
        start, end = self.spans[index].tolist()
        blob = self.blobs[self.blob_index[index]]
        if isinstance(blob, RecordFile):
            return blob.read(start, end)
        return memoryview(blob)[start:end]

    def close(self) -> None:
        """Close the spill files' descriptors (reopened on the next read)."""
        for blob in self.blobs:
            if isinstance(blob, RecordFile):
                blob.close()


def record_key(records: bytes | memoryview) -> str:
    """The sample key of a sample's records (its first member is named ``{key}.{suffix}``)."""
    info = tarfile.TarInfo.frombuf(bytes(records[:BLOCK]), "utf-8", "surrogateescape")
    return info.name.partition(".")[0]


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
            records = rekey_records(bytes(records), f"{record_key(records)}_pad{position}")
        parts.append(records)
    size = sum(len(p) for p in parts) + 2 * BLOCK  # with the end-of-archive marker
    parts.append(bytes(2 * BLOCK + (-size % RECORD)))
    data = b"".join(parts)  # the one copy of the shard's bytes
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
