"""Shared fixtures and the unit lane.

``tiny_shards``: the real data pipeline (real Ray, 2 workers) on tests/assets.

The unit lane (``python -m pytest -m unit``): every test that starts no process of its own. A test
is marked ``unit`` here unless it is marked ``slow``, ``distributed`` or ``integration``, or uses a
fixture of PROCESS_FIXTURES. The rule is enforced: a unit test that starts a subprocess (which is
also how Ray and the DeepSpeed launcher start) fails, naming the marker it needs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
NOT_UNIT = ("slow", "distributed", "integration")
# fixtures that start processes (Ray, the DeepSpeed launcher, a training subprocess)
PROCESS_FIXTURES = {
    "tiny_shards", "local_ray", "run", "zero_checkpoint", "single_process_losses", "reference_two_ranks"
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marked = any(item.get_closest_marker(name) for name in NOT_UNIT)
        if not marked and not PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a subprocess: mark it integration (tests/conftest.py)")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def tiny_pipeline_config(output_dir: Path, **overrides):
    """The small pipeline config used by ``tiny_shards``; tests tweak it with keyword overrides."""
    from bertscale.config import from_dict
    from bertscale.data_pipeline.config import PipelineConfig

    values = {
        "inputs": {"wiki": [str(ASSETS / "tiny_wiki.xml")], "books": [str(ASSETS / "books" / "*.txt")]},
        "output_dir": str(output_dir),
        "tokenizer": {"vocab_size": 600},
        "pairs": {"max_seq_length": 64, "dupe_factor": 2, "max_predictions_per_seq": 10},
        "split": {"validation_fraction": 0.25, "samples_per_shard": 8, "remainder": "drop"},
        "num_workers": 2,
        "seed": 19,  # validation: one article + the short story (2-3 shards); train keeps ~240 samples
        "progress": False,
    }
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(PipelineConfig, values, source="tiny_pipeline_config")


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(output_dir, num_workers=1, pairs__dupe_factor=3)`` → the tiny PipelineConfig."""
    return tiny_pipeline_config


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with manifest.json, tokenizer.model, train-*.tar and validation-*.tar.

    Built once per session from tests/assets (a tiny wiki dump with a redirect, a talk page,
    lists, a table and refs, plus three small books): max_seq_length 64, vocab 600, dupe_factor 2,
    8 samples per shard (32 train shards, 2 validation shards).
    """
    from bertscale.data_pipeline.run import run_pipeline

    return run_pipeline(tiny_pipeline_config(tmp_path_factory.mktemp("tiny_shards") / "data"))
