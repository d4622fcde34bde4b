"""Check a dataset against its manifest: ``python -m bertscale.data_pipeline.verify DIR``.

Every shard's sha256, sample count and token count, and every sample's schema (shards are read
in full), plus the tokenizer's sha256. One line per bad shard on stdout, a summary last; exit 1
if anything is bad, 2 if DIR is no dataset at all (no or malformed manifest.json).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

from bertscale.data_pipeline.schema import Manifest, load_manifest, read_shard, shard_path
from bertscale.errors import DataError, run_cli

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(root: str | Path, manifest: Manifest | None = None) -> tuple[int, list[str]]:
    """→ (shards checked, one problem line per bad file)."""
    root = Path(root)
    manifest = manifest or load_manifest(root)
    problems: list[str] = []
    tokenizer = root / manifest.tokenizer_file
    if not tokenizer.is_file():
        problems.append(f"{tokenizer}: tokenizer missing")
    elif file_sha256(tokenizer) != manifest.tokenizer_sha256:
        problems.append(f"{tokenizer}: sha256 differs from the manifest's")
    checked = 0
    for split in manifest.splits.values():
        for info in split.shards:
            checked += 1
            try:
                path = shard_path(root, info.name)
                problem = _check_shard(path, info.sha256, info.samples, info.tokens)
            except DataError as err:
                problem = str(err)
            if problem:
                problems.append(problem)
    return checked, problems


def _check_shard(path: Path, sha256: str, samples: int, tokens: int) -> str | None:
    if not path.is_file():
        return f"{path}: shard missing"
    actual = file_sha256(path)
    if actual != sha256:
        return f"{path}: sha256 {actual[:12]}… differs from the manifest's {sha256[:12]}…"
    counted = counted_tokens = 0
    for sample in read_shard(path):  # a DataError names the shard and the bad sample
        counted += 1
        counted_tokens += sample.num_tokens
    if (counted, counted_tokens) != (samples, tokens):
        return f"{path}: {counted} samples / {counted_tokens} tokens, the manifest says {samples} / {tokens}"
    return None


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.data_pipeline.verify", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dataset", type=Path, help="a data_pipeline output directory")
    args = parser.parse_args(argv)
    checked, problems = verify(args.dataset)
    for line in problems:
        print(line, flush=True)
    if problems:
        print(f"{args.dataset}: {len(problems)} bad of {checked} shards + tokenizer", flush=True)
        raise SystemExit(1)
    print(f"{args.dataset}: {checked} shards and the tokenizer match the manifest")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
