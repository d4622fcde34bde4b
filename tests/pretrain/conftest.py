"""Fixtures over tests/helpers/shards.py: small synthetic shards that follow bertscale.data_pipeline.schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.shards import make_sample, write_shards


@pytest.fixture
def synthetic_shards(tmp_path: Path) -> Path:
    return write_shards(tmp_path / "shards")


@pytest.fixture(name="write_shards", scope="session")
def write_shards_fixture():
    """``write_shards(root, {split: n_shards}, per_shard)`` -> root (also: from helpers.shards import write_shards)."""
    return write_shards


@pytest.fixture(name="make_sample", scope="session")
def make_sample_fixture():
    """``make_sample(rng, key, max_len=32, dupe=2)`` -> a Sample over ids < VOCAB_SIZE (96)."""
    return make_sample
