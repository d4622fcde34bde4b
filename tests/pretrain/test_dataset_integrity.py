"""Manifest integrity: shard names confined to the dataset, and ``verify`` (sha256 + counts).

Here rather than in tests/data_pipeline because it uses the synthetic shard writer of this
directory's conftest (real tar files following the schema).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.data_pipeline.schema import MANIFEST_NAME, load_manifest
from bertscale.data_pipeline.verify import verify
from bertscale.errors import DataError

REPO = Path(__file__).parents[2]


def verify_cli(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertscale.data_pipeline.verify", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.integration
def test_verify_names_every_bad_shard_and_exits_1(write_shards, tmp_path):
    root = write_shards(tmp_path / "data", {"train": 5, "validation": 1})
    assert verify(root) == (6, [])
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    data = bytearray((root / "train-000001.tar").read_bytes())
    data[700] ^= 0xFF  # one flipped byte
    (root / "train-000001.tar").write_bytes(bytes(data))
    (root / "train-000002.tar").unlink()
    manifest["splits"]["train"]["shards"][3]["samples"] += 1  # sha256 still right, count not
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    (root / "tokenizer.model").write_bytes(b"another tokenizer")
    result = verify_cli(root)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"{root / 'tokenizer.model'}: sha256 differs from the manifest's",
        lines[1],
        f"{root / 'train-000002.tar'}: shard missing",
        lines[3],
        f"{root}: 4 bad of 6 shards + tokenizer",
    ]
    assert lines[1].startswith(f"{root / 'train-000001.tar'}: sha256 ") and "differs" in lines[1]
    assert (
        lines[3].startswith(f"{root / 'train-000003.tar'}: 16 samples / ")
        and "manifest says 17 / " in lines[3]
    )


@pytest.mark.integration
def test_verify_of_a_good_dataset_and_of_no_dataset(write_shards, tmp_path):
    root = write_shards(tmp_path / "data")
    result = verify_cli(root)
    assert (result.returncode, result.stdout) == (
        0,
        f"{root}: 5 shards and the tokenizer match the manifest\n",
    )
    result = verify_cli(tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(
        f"error: {tmp_path / MANIFEST_NAME}: manifest not found"
    )


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd", "sub/train-000000.tar", ".."])
def test_manifest_shard_names_may_not_leave_the_dataset(write_shards, tmp_path, name):
    root = write_shards(tmp_path / "data")
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = name
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="is not a file name in"):
        load_manifest(root)


def test_a_shard_symlinked_out_of_the_dataset_is_refused(write_shards, tmp_path):
    root = write_shards(tmp_path / "data")
    outside = tmp_path / "secret.tar"
    outside.write_bytes((root / "train-000000.tar").read_bytes())
    (root / "train-000000.tar").unlink()
    (root / "train-000000.tar").symlink_to(outside)
    with pytest.raises(DataError, match=r"shard 'train-000000.tar' lies outside"):
        load_manifest(root).shard_paths(root, "train")
    assert any("lies outside" in line for line in verify(root)[1])
    (root / "train-000000.tar").unlink()
    outside.rename(root / "train-000000.tar")
    (root / "train-000001.tar").rename(root / "real.tar")
    (root / "train-000001.tar").symlink_to("real.tar")  # a link inside the dataset is fine
    assert load_manifest(root).shard_paths(root, "train")[1] == root / "train-000001.tar"
    assert verify(root) == (5, [])
