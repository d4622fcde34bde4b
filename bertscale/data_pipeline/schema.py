"""THE shard contract between data_pipeline (writer) and pretrain (reader).

One sample is one sequence pair ``[CLS] A [SEP] B [SEP]``, unpadded. Inside a WebDataset tar a
sample is the group of members sharing the key ``{key}``::

    {key}.input_ids.npy          int32 (T,)   unmasked token ids
    {key}.token_type_ids.npy     uint8 (T,)   0 for [CLS] A [SEP], 1 for B [SEP]
    {key}.masked_positions.npy   int16 (D, M) positions chosen for MLM, one row per mask draw
    {key}.masked_ids.npy         int32 (D, M) id placed at each position ([MASK], random or same)
    {key}.next_sentence_label.txt          "0" = B follows A in the source, "1" = B is random

D is the dupe factor (number of static mask draws); labels for MLM are ``input_ids[positions]``.
Shards are named ``{split}-{index:06d}.tar`` and every shard of a split holds the same number of
samples. ``manifest.json`` beside them describes the whole dataset (see :class:`Manifest`).

This module imports neither ray nor torch so that both sides can depend on it cheaply.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertscale.errors import DataError
from bertscale.masking import MaskingVocab

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.model"  # a SentencePiece model (the pipeline trains one by default)
HF_TOKENIZER_NAME = "tokenizer.json"  # a HuggingFace `tokenizers` file (e.g. a published WordPiece)
TOKENIZER_FILES = (TOKENIZER_NAME, HF_TOKENIZER_NAME)
SPLITS = ("train", "validation")

# The five special tokens every tokenizer must have. Their ids depend on the tokenizer: the
# SentencePiece models the pipeline trains put them at 0-4, a published WordPiece vocabulary
# elsewhere (bert-base-uncased: [PAD]=0 [UNK]=100 [CLS]=101 [SEP]=102 [MASK]=103). Readers take
# them from the manifest (:meth:`Manifest.special`) or the tokenizer, never from constants.
PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)


NEXT_IS_REAL, NEXT_IS_RANDOM = 0, 1  # HuggingFace convention for next_sentence_label

# member suffix -> dtype
ARRAY_FIELDS: dict[str, np.dtype] = {
    "input_ids": np.dtype(np.int32),
    "token_type_ids": np.dtype(np.uint8),
    "masked_positions": np.dtype(np.int16),
    "masked_ids": np.dtype(np.int32),
}
# the longest pair the dtypes above hold: masked_positions index into it
MAX_SEQ_LENGTH = int(np.iinfo(ARRAY_FIELDS["masked_positions"]).max) + 1
LABEL_FIELD = "next_sentence_label"
SAMPLE_MEMBERS = (*(f"{name}.npy" for name in ARRAY_FIELDS), f"{LABEL_FIELD}.txt")


@dataclass(frozen=True)
class SpecialTokens:
    """The special ids of a vocabulary, and the ids masking must leave alone.

    ``reserved`` ([start, stop) id ranges) holds the special tokens and unused slots (WordPiece's
    ``[unused*]``): they are never chosen for masking and never drawn as a random replacement.
    """

    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    reserved: tuple[tuple[int, int], ...]

    @classmethod
    def from_ids(cls, ids: dict[str, int], vocab_size: int, reserved: list[list[int]] | None = None):
        """From ``{"[PAD]": id, ...}`` (what the manifest records); ``reserved`` defaults to the five ids."""
        missing = [name for name in SPECIAL_TOKENS if name not in ids]
        if missing:
            raise DataError(f"special tokens lack {', '.join(missing)}")
        values = [int(ids[name]) for name in SPECIAL_TOKENS]
        ranges = reserved if reserved is not None else id_ranges(np.array(values))
        return cls(*values, vocab_size=vocab_size, reserved=tuple((int(a), int(b)) for a, b in ranges))

    @property
    def ids(self) -> dict[str, int]:
        values = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        return dict(zip(SPECIAL_TOKENS, values, strict=True))

    def masking_vocab(self) -> MaskingVocab:
        """What :mod:`bertscale.masking` needs: [MASK] and the reserved ids (never chosen nor drawn)."""
        return self._masking_vocab

    @functools.cached_property
    def _masking_vocab(self) -> MaskingVocab:  # built once: masking asks per sample
        reserved = tuple(i for start, stop in self.reserved for i in range(start, stop))
        return MaskingVocab(self.vocab_size, self.mask_id, reserved)

    @property
    def is_special(self) -> np.ndarray:
        """bool (V,): True at the reserved ids."""
        return self.masking_vocab().is_special

    @property
    def replacement_ids(self) -> np.ndarray:
        """int (R,): the ids a random replacement is drawn from, ascending."""
        return self.masking_vocab().replacement_ids


def id_ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted unique ids → [start, stop) ranges (how the manifest stores reserved ids compactly)."""
    ids = np.unique(ids)
    if not len(ids):
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts = np.concatenate([[ids[0]], ids[breaks + 1]])
    stops = np.concatenate([ids[breaks] + 1, [ids[-1] + 1]])
    return [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]


@dataclass
class Sample:
    key: str
    input_ids: np.ndarray  # (T,) int32
    token_type_ids: np.ndarray  # (T,) uint8
    masked_positions: np.ndarray  # (D, M) int16
    masked_ids: np.ndarray  # (D, M) int32
    next_sentence_label: int

    def validate(self, where: str = "sample", special: SpecialTokens | None = None) -> None:
        """Shapes and ranges; with ``special``, also the [CLS] ... [SEP] frame."""
        t = self.input_ids.shape[0] if self.input_ids.ndim == 1 else -1
        problems = []
        if t < 3:
            problems.append(f"input_ids must be 1-D with at least 3 tokens, shape {self.input_ids.shape}")
        elif special is not None and (
            self.input_ids[0] != special.cls_id or self.input_ids[-1] != special.sep_id
        ):
            problems.append("input_ids must start with [CLS] and end with [SEP]")
        if self.token_type_ids.shape != self.input_ids.shape:
            problems.append("token_type_ids shape differs from input_ids")
        if self.masked_positions.ndim != 2 or self.masked_positions.shape != self.masked_ids.shape:
            problems.append("masked_positions/masked_ids must be equal (D, M) arrays")
        elif (
            t >= 3
            and self.masked_positions.size
            and (self.masked_positions.min() < 0 or self.masked_positions.max() >= t)
        ):
            problems.append("masked_positions out of range")
        if self.next_sentence_label not in (NEXT_IS_REAL, NEXT_IS_RANDOM):
            problems.append(f"next_sentence_label must be 0 or 1, got {self.next_sentence_label}")
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems))

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def encode_sample(sample: Sample) -> dict[str, bytes]:
    """Member suffix → bytes, ready for a tar writer (``{key}.{suffix}``)."""
    members: dict[str, bytes] = {}
    for name, dtype in ARRAY_FIELDS.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(getattr(sample, name), dtype=dtype), allow_pickle=False)
        members[f"{name}.npy"] = buf.getvalue()
    members[f"{LABEL_FIELD}.txt"] = str(int(sample.next_sentence_label)).encode()
    return members


def decode_sample(
    key: str, members: dict[str, bytes], where: str = "shard", special: SpecialTokens | None = None
) -> Sample:
    """Inverse of :func:`encode_sample`; a missing member or wrong dtype is a :class:`DataError`."""
    missing = [m for m in SAMPLE_MEMBERS if m not in members]
    if missing:
        raise DataError(f"{where}: sample '{key}' lacks {', '.join(missing)}")
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in ARRAY_FIELDS.items():
        try:
            arr = np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{where}: sample '{key}' has an unreadable {name}.npy ({err})") from None
        if arr.dtype != dtype:
            raise DataError(f"{where}: sample '{key}' {name} has dtype {arr.dtype}, expected {dtype}")
        arrays[name] = arr
    try:
        label = int(members[f"{LABEL_FIELD}.txt"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{where}: sample '{key}' has a non-integer {LABEL_FIELD}") from None
    sample = Sample(key=key, next_sentence_label=label, **arrays)
    sample.validate(f"{where}: sample '{key}'", special)
    return sample


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


SHARD_NAME = re.compile(r"^[A-Za-z0-9_]+-\d{6}\.tar$")


def is_dataset_file(name: str) -> bool:
    """Whether a file name in an output directory is one the pipeline writes (what overwrite replaces)."""
    return name in (MANIFEST_NAME, *TOKENIZER_FILES) or bool(SHARD_NAME.match(name))


def read_shard(path: str | Path, start: int = 0, special: SpecialTokens | None = None) -> Iterator[Sample]:
    """Stream the samples of one shard in order; corruption raises a DataError naming the shard.

    The first ``start`` samples are skipped without being decoded (a resumed reader seeks cheaply).
    ``special`` (the manifest's) also checks each sample's [CLS] ... [SEP] frame.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard not found")
    current_key: str | None = None
    members: dict[str, bytes] = {}
    index = -1  # index of the sample whose members are being gathered
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, dot, suffix = info.name.partition(".")
                if not dot:
                    raise DataError(f"{path}: member '{info.name}' is not named key.field")
                if key != current_key:
                    if current_key is not None and index >= start:
                        yield decode_sample(current_key, members, str(path), special)
                    current_key, members, index = key, {}, index + 1
                if index < start:
                    continue  # skipped sample: its bytes are never read
                extracted = tar.extractfile(info)
                assert extracted is not None
                members[suffix] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{path}: corrupt or truncated shard ({err})") from None
    if current_key is not None and index >= start:
        yield decode_sample(current_key, members, str(path), special)


@dataclass
class ShardInfo:
    name: str
    samples: int
    tokens: int
    sha256: str


@dataclass
class SplitInfo:
    samples_per_shard: int
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


@dataclass
class Manifest:
    """What ``manifest.json`` holds; written last, atomically, so its presence means complete."""

    tokenizer_sha256: str
    vocab_size: int
    max_seq_length: int
    dupe_factor: int
    splits: dict[str, SplitInfo]
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # counts of documents/sentences/tokens
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path": ..., "reason": ...}
    dropped_samples: dict[str, int] = field(default_factory=dict)  # remainder not filling a shard
    format_version: int = FORMAT_VERSION
    tokenizer_file: str = TOKENIZER_NAME
    # manifests written before these fields existed came from the pipeline's SentencePiece (ids 0-4)
    special_tokens: dict[str, int] = field(
        default_factory=lambda: dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True))
    )
    tokenizer_kind: str = "sentencepiece"  # or "wordpiece" (tokenizer.json)
    reserved_ids: list[list[int]] = field(default_factory=lambda: [[0, len(SPECIAL_TOKENS)]])

    def special(self) -> SpecialTokens:
        return SpecialTokens.from_ids(self.special_tokens, self.vocab_size, self.reserved_ids)

    def masking_vocab(self) -> MaskingVocab:
        return self.special().masking_vocab()

    def to_json(self) -> str:
        data = asdict(self)
        for name, split in self.splits.items():
            data["splits"][name]["samples"] = split.samples
            data["splits"][name]["tokens"] = split.tokens
        return json.dumps(data, indent=2, sort_keys=False) + "\n"


    def shard_paths(self, root: str | Path, split: str) -> list[Path]:
        if split not in self.splits:
            raise DataError(f"{Path(root) / MANIFEST_NAME}: no split '{split}' (has {sorted(self.splits)})")
        return [shard_path(root, s.name) for s in self.splits[split].shards]


def shard_path(root: str | Path, name: str) -> Path:
    """``root / name``, confined to ``root``: a manifest may not point at other files (``..``, an
    absolute path, a symlink leading out), whoever wrote it."""
    path = Path(root) / name
    if not _is_plain_name(name) or not path.resolve().is_relative_to(Path(root).resolve()):
        raise DataError(f"{Path(root) / MANIFEST_NAME}: shard '{name}' lies outside {root}")
    return path


def _is_plain_name(name: str) -> bool:
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    )


def load_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (is '{root}' a finished data_pipeline output?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: format_version {data.get('format_version')} != {FORMAT_VERSION}")
        splits = {}
        for name, split in data.pop("splits").items():
            shards = [ShardInfo(**s) for s in split["shards"]]
            for shard in shards:
                if not isinstance(shard.name, str) or not _is_plain_name(shard.name):
                    raise DataError(f"{path}: shard name {shard.name!r} is not a file name in {root}")
            splits[name] = SplitInfo(samples_per_shard=split["samples_per_shard"], shards=shards)
        return Manifest(splits=splits, **data)
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: malformed manifest ({err})") from None


# --- fast whole-shard reading (the training input path) ------------------------------------------

_NPY_DESCR = {np.dtype(np.int32): b"'<i4'", np.dtype(np.uint8): b"'|u1'", np.dtype(np.int16): b"'<i2'"}
_FIELDS = (*ARRAY_FIELDS, LABEL_FIELD)


@dataclass
class ShardArrays:
    """Every sample of one shard as flat arrays; sample ``i`` is ``input_ids[offsets[i]:offsets[i+1]]``.

    Masked draws of sample ``i`` are ``masked_positions[mask_offsets[i]:mask_offsets[i+1]]``, a
    (D, M_i) block row-major, likewise ``masked_ids``.
    """

    path: Path
    keys: list[str]
    input_ids: np.ndarray  # (N,) int32, all samples back to back
    token_type_ids: np.ndarray  # (N,) uint8
    offsets: np.ndarray  # (n + 1,) int64
    masked_positions: np.ndarray  # (K,) int16
    masked_ids: np.ndarray  # (K,) int32
    mask_offsets: np.ndarray  # (n + 1,) int64
    mask_draws: np.ndarray  # (n,) int64: D of each sample
    next_sentence_label: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _tar_members(buf: bytes, path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member; the tar headers are walked once."""
    offset, end = 0, len(buf)
    long_name: str | None = None
    while offset + 512 <= end:
        header = buf[offset : offset + 512]
        if header[0] == 0:  # end-of-archive block
            return
        try:
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            raise DataError(f"{path}: corrupt or truncated shard (bad tar header at byte {offset})") from None
        start = offset + 512
        if start + size > end:
            raise DataError(f"{path}: corrupt or truncated shard (member at byte {offset} runs past the end)")
        kind = header[156:157]
        if kind == b"x":  # a pax header: the next member's long name
            for record in buf[start : start + size].split(b"\n"):
                _, _, item = record.partition(b" ")
                if item.startswith(b"path="):
                    long_name = item[5:].decode("utf-8", "replace")
        elif kind in (b"0", b"\0"):
            name = long_name or header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            long_name = None
            yield name, start, size
        offset = start + (size + 511) // 512 * 512
    raise DataError(f"{path}: corrupt or truncated shard (no end-of-archive marker)")


def _npy_data(
    buf: bytes, start: int, size: int, dtype: np.dtype, where: str
) -> tuple[int, int, tuple[int, ...]]:
    """(data offset, element count, shape) of a .npy member, checked against ``dtype``; no copy."""
    if buf[start : start + 6] != b"\x93NUMPY":
        raise DataError(f"{where} is not a .npy array")
    if buf[start + 6] == 1:
        hlen, hstart = int.from_bytes(buf[start + 8 : start + 10], "little"), start + 10
    else:
        hlen, hstart = int.from_bytes(buf[start + 8 : start + 12], "little"), start + 12
    header = buf[hstart : hstart + hlen]
    if _NPY_DESCR[dtype] not in header or b"'fortran_order': False" not in header:
        raise DataError(
            f"{where} has dtype/order other than {dtype} C-order ({header.decode(errors='replace')})"
        )
    shape_at = header.find(b"'shape': (") + 10
    shape = tuple(int(x) for x in header[shape_at : header.find(b")", shape_at)].split(b",") if x.strip())
    data = hstart + hlen
    count = (start + size - data) // dtype.itemsize
    if int(np.prod(shape)) != count:
        raise DataError(f"{where} holds {count} values, its header says shape {shape}")
    return data, count, shape


def _npy_members(
    buf: bytes, members: list[int], field_name: str, keys: list[str], path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data offsets, element counts, first dimension) of a field's .npy members, all at once.

    ``members`` is [start, size, start, size, ...]. Headers as ``np.save`` writes them (v1, keys in
    order) are checked with array compares; any other header is parsed one by one.
    """
    dtype = ARRAY_FIELDS[field_name]
    where = np.array(members, dtype=np.int64).reshape(-1, 2)
    starts, sizes = where[:, 0], where[:, 1]
    whole = np.frombuffer(buf, dtype=np.uint8)
    prefix = b"\x93NUMPY\x01\x00"
    text = b"{'descr': " + _NPY_DESCR[dtype] + b", 'fortran_order': False, 'shape': ("

    def at(offsets: np.ndarray, width: int) -> np.ndarray:
        return whole[np.minimum(offsets[:, None] + np.arange(width), len(whole) - 1)]

    ok = (at(starts, 8) == np.frombuffer(prefix, np.uint8)).all(1) & (sizes >= 10 + len(text))
    ok &= (at(starts + 10, len(text)) == np.frombuffer(text, np.uint8)).all(1)
    header = at(starts + 8, 2).astype(np.int64)
    data = starts + 10 + header[:, 0] + (header[:, 1] << 8)
    nbytes = starts + sizes - data
    ok &= (nbytes >= 0) & (nbytes % dtype.itemsize == 0)
    counts = nbytes // dtype.itemsize
    first = counts.copy()  # 1-D: the length; 2-D: D, read below
    digits = at(starts + 10 + len(text), 4)  # "5, 19)" -> D; at most 3 digits then ','
    if field_name in ("masked_positions", "masked_ids"):
        is_digit = (digits >= ord("0")) & (digits <= ord("9"))
        width = np.argmin(is_digit, axis=1)  # digits before the ','
        ok &= (width > 0) & (digits[np.arange(len(digits)), width] == ord(","))
        value = np.zeros(len(digits), np.int64)
        for j in range(digits.shape[1] - 1):
            value = np.where(j < width, value * 10 + (digits[:, j].astype(np.int64) - ord("0")), value)
        first = value
    for i in np.flatnonzero(~ok):  # a header np.save would not write: parse it in full
        d, c, shape = _npy_data(
            buf, int(starts[i]), int(sizes[i]), dtype, f"{path}: sample '{keys[i]}' {field_name}"
        )
        data[i], counts[i], first[i] = d, c, shape[0] if shape else 1
    return data, counts, first


def _gather(
    buf: bytes, dtype: np.dtype, starts: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every member's elements back to back (one fancy index for the shard) and the offsets."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    size = dtype.itemsize
    if not (starts % size).any():  # .npy data is 64-byte aligned in a tar: index whole elements
        whole = np.frombuffer(buf, dtype=dtype, count=len(buf) // size)
        return whole[np.repeat(starts // size - offsets[:-1], counts) + np.arange(offsets[-1])], offsets
    byte = np.repeat(starts - offsets[:-1] * size, counts) + np.arange(offsets[-1]) * size
    raw = np.frombuffer(buf, dtype=np.uint8)[byte[:, None] + np.arange(size)]
    return raw.reshape(-1).view(dtype), offsets


def load_shard(
    path: str | Path, *, vocab_size: int, expected_samples: int | None = None, special: SpecialTokens | None = None
) -> ShardArrays:
    """Read and check a whole shard at once: tar layout parsed once, arrays taken at their offsets.

    Besides the layout, values are checked against the manifest: token and masked ids below
    ``vocab_size``, token types 0/1, positions inside their sequence, the sample count, and with
    ``special`` (the manifest's) the [CLS] ... [SEP] frame. Any problem
    is one :class:`DataError` naming the shard (and the sample).
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: shard not found") from None
    except OSError as err:
        raise DataError(f"{path}: unreadable shard ({err})") from None
    names: dict[str, list[str]] = {f: [] for f in _FIELDS}  # field -> key of each of its members
    found: dict[str, list[int]] = {f: [] for f in _FIELDS}  # field -> [start, size, start, size, ...]
    for name, start, size in _tar_members(buf, path):
        key, dot, suffix = name.partition(".")
        if not dot:
            raise DataError(f"{path}: member '{name}' is not named key.field")
        field_name = suffix.rpartition(".")[0]
        if field_name in names:  # other members (webdataset allows extras) are not ours to read
            names[field_name].append(key)
            found[field_name] += (start, size)
    keys = names["input_ids"]
    for field_name, field_keys in names.items():
        if field_keys != keys:
            missing = next((a for a, b in itertools.zip_longest(keys, field_keys) if a != b), None)
            missing = missing or next(k for k in field_keys if k not in set(keys))
            raise DataError(f"{path}: sample '{missing}' lacks or repeats its {field_name} member")
    if len(set(keys)) != len(keys):
        raise DataError(f"{path}: a sample key occurs twice")
    if expected_samples is not None and len(keys) != expected_samples:
        raise DataError(f"{path}: holds {len(keys)} samples, the manifest says {expected_samples}")

    arrays, offsets, draws = {}, {}, None
    for field_name in ARRAY_FIELDS:
        data, counts, first = _npy_members(buf, found[field_name], field_name, keys, path)
        arrays[field_name], offsets[field_name] = _gather(buf, ARRAY_FIELDS[field_name], data, counts)
        if field_name == "masked_positions":
            draws = first
    label_at = np.array(found[LABEL_FIELD], dtype=np.int64).reshape(-1, 2)
    if len(label_at) and (label_at[:, 1] == 1).all():  # "0" / "1": one byte each
        labels = np.frombuffer(buf, dtype=np.uint8)[label_at[:, 0]].astype(np.int64) - ord("0")
    else:
        try:
            labels = np.array([int(buf[a : a + n].strip()) for a, n in label_at], dtype=np.int64)
        except ValueError:
            raise DataError(f"{path}: a sample has a non-integer {LABEL_FIELD}") from None
    assert draws is not None
    shard = ShardArrays(
        path, keys, arrays["input_ids"], arrays["token_type_ids"], offsets["input_ids"],
        arrays["masked_positions"], arrays["masked_ids"], offsets["masked_positions"], draws, labels,
    )  # fmt: skip
    _check_values(shard, vocab_size, offsets["token_type_ids"], offsets["masked_ids"], special)
    return shard


def _check_values(
    s: ShardArrays, vocab_size: int, type_offsets: np.ndarray, id_offsets: np.ndarray, special: SpecialTokens | None
) -> None:
    """The shard's values against the contract and the manifest vocabulary, all samples at once."""
    lengths, n = s.lengths, len(s.keys)

    def fail(bad: np.ndarray, problem: str) -> None:
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{s.path}: sample '{s.keys[first]}' {problem}")

    def per_sample(flat_bad: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        counts = np.concatenate([[0], np.cumsum(flat_bad)])
        return counts[offsets[1:]] > counts[offsets[:-1]]

    if n == 0:
        return
    fail(lengths < 3, "has fewer than 3 tokens")
    if special is not None:
        fail(s.input_ids[s.offsets[:-1]] != special.cls_id, "input_ids must start with [CLS]")
        fail(s.input_ids[s.offsets[1:] - 1] != special.sep_id, "input_ids must end with [SEP]")
    ids_bad = (s.input_ids < 0) | (s.input_ids >= vocab_size)
    fail(per_sample(ids_bad, s.offsets), f"has a token id outside the manifest vocab [0, {vocab_size})")
    fail(np.diff(type_offsets) != lengths, "token_type_ids shape differs from input_ids")
    fail(per_sample(s.token_type_ids > 1, s.offsets), "has a token type other than 0/1")
    fail(np.diff(id_offsets) != np.diff(s.mask_offsets), "masked_positions/masked_ids differ in shape")
    mask_counts = np.diff(s.mask_offsets)
    fail(
        (s.mask_draws < 1) | (mask_counts % np.maximum(s.mask_draws, 1) != 0),
        "masked_positions must be a (D, M) array",
    )
    limit = np.repeat(lengths, np.diff(s.mask_offsets))
    fail(per_sample((s.masked_positions < 0) | (s.masked_positions >= limit), s.mask_offsets),
         "has masked_positions out of range")  # fmt: skip
    ids_bad = (s.masked_ids < 0) | (s.masked_ids >= vocab_size)
    fail(per_sample(ids_bad, s.mask_offsets), f"has a masked id outside the manifest vocab [0, {vocab_size})")
    fail((s.next_sentence_label != NEXT_IS_REAL) & (s.next_sentence_label != NEXT_IS_RANDOM),
         "next_sentence_label must be 0 or 1")  # fmt: skip
