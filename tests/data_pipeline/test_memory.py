"""The driver's memory does not grow with the dataset: tasks read the inputs, train the tokenizer
(no cap on its sample here: the whole corpus) and write the shards; the driver keeps counts.

The same pipeline runs on 4 and on 32 copies of the test corpus, each in a fresh process, and
the driver's peak RSS (``ru_maxrss``: everything it touched, the Ray object store's shared pages
included) and peak traced heap (tracemalloc: Python objects and numpy buffers) are compared with
what the dataset grew by. Before spilling, the driver held every sample's tar bytes at once: on
this corpus its peak RSS grew by 136% of the shard bytes and its traced heap by 12%.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.config import save_config

ASSETS = Path(__file__).parents[1] / "assets"
REPO = Path(__file__).parents[2]

DRIVER = """
import json, resource, sys, tracemalloc
from bertscale.config import load_config
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.data_pipeline.run import run_pipeline

cfg = load_config(PipelineConfig, sys.argv[1])
tracemalloc.start()
run_pipeline(cfg)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"traced_peak": peak, "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _driver_peaks(root: Path, copies: int, tiny_config) -> tuple[dict[str, int], int, int]:
    """→ (driver peaks in bytes, shard bytes, pairs) for ``copies`` copies of the test corpus."""
    inputs = root / "inputs"
    for c in range(copies):  # every copy is its own documents (own ids, own randomness)
        for src in [ASSETS / "tiny_wiki.xml", *sorted((ASSETS / "books").glob("*.txt"))]:
            (inputs / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, inputs / f"c{c:03d}" / src.name)
    cfg = tiny_config(
        root / "data",
        inputs__wiki=[str(inputs / "*" / "*.xml")],
        inputs__books=[str(inputs / "*" / "*.txt")],
        pairs__max_seq_length=128,
        pairs__dupe_factor=10,
        pairs__max_predictions_per_seq=20,
    )
    save_config(cfg, root / "pipeline.yaml")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root / "pipeline.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert sorted(p.name for p in (root / "data").iterdir() if p.name.startswith(".")) == []  # spill gone
    shard_bytes = sum(p.stat().st_size for p in (root / "data").glob("*.tar"))
    return json.loads(done.stdout.strip().splitlines()[-1]), shard_bytes, manifest["inputs"]["pairs"]


@pytest.mark.slow
def test_driver_memory_does_not_grow_with_the_dataset(tmp_path: Path, tiny_config) -> None:
    small, small_bytes, small_pairs = _driver_peaks(tmp_path / "small", 4, tiny_config)
    big, big_bytes, big_pairs = _driver_peaks(tmp_path / "big", 32, tiny_config)
    grown = big_bytes - small_bytes
    assert big_pairs > 6 * small_pairs and grown > 25_000_000, (small_pairs, big_pairs, grown)
    # per-sample metadata (doc id, label, tokens, record span: 41 bytes of ~5 KB records) may grow
    assert big["traced_peak"] - small["traced_peak"] < 0.03 * grown, (small, big, grown)
    assert big["max_rss"] - small["max_rss"] < 0.25 * grown, (small, big, grown)  # RSS is noisier
