"""WebDataset tar shards and manifest.json; every file lands atomically (temp + rename).

Tars are byte-reproducible: members in sample order, zero mtimes/uids, fixed modes, so the
sha256 recorded in the manifest is the same for the same seed however many workers ran.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bertscale.atomic import atomic_write, atomic_write_text
from bertscale.errors import DataError
from data_pipeline.schema import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, shard_name


@dataclass
class EncodedSample:
    """A sample already serialised by ``schema.encode_sample`` (done in the workers)."""

    key: str
    members: dict[str, bytes]
    num_tokens: int


def plan_shards(
    samples: list[EncodedSample], samples_per_shard: int, remainder: str, split: str
) -> tuple[list[list[EncodedSample]], int]:
    """Cut into equal shards; the remainder is dropped, or padded with repeats from the start.

    Returns the shards and the number of dropped samples.
    """
    if not samples:
        return [], 0
    full, rest = divmod(len(samples), samples_per_shard)
    shards = [samples[i * samples_per_shard : (i + 1) * samples_per_shard] for i in range(full)]
    if rest and remainder == "pad":
        tail = samples[full * samples_per_shard :]
        need = samples_per_shard - rest
        repeats = [samples[i % len(samples)] for i in range(need)]
        tail += [EncodedSample(f"{s.key}_pad{i}", s.members, s.num_tokens) for i, s in enumerate(repeats)]
        shards.append(tail)
        rest = 0
    if not shards:
        raise DataError(
            f"split '{split}' has {len(samples)} samples, fewer than split.samples_per_shard="
            f"{samples_per_shard}: lower it, or set split.remainder=pad"
        )
    return shards, rest


def write_shard(path: Path, samples: list[EncodedSample]) -> ShardInfo:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for suffix, data in sample.members.items():
                info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    with atomic_write(path, "wb") as f:
        f.write(data)
    return ShardInfo(
        name=path.name,
        samples=len(samples),
        tokens=sum(s.num_tokens for s in samples),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def write_split(
    root: Path, split: str, shards: list[list[EncodedSample]], samples_per_shard: int
) -> SplitInfo:
    info = SplitInfo(samples_per_shard=samples_per_shard)
    for index, samples in enumerate(shards):
        info.shards.append(write_shard(root / shard_name(split, index), samples))
    return info


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Written last: its presence means the dataset is complete."""
    atomic_write_text(root / MANIFEST_NAME, manifest.to_json())
