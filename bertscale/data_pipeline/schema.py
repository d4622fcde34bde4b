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
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


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
