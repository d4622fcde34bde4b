"""Fine-tuning over several seeds: the aggregation by hand, and ``python -m bertscale.finetune seeds=[...]``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.config import load_config
from bertscale.errors import ConfigError
from bertscale.finetune.config import FinetuneConfig
from bertscale.finetune.seeds import aggregate, summary_table

ROOT = Path(__file__).resolve().parents[2]


def test_aggregate_median_spread_and_std_by_hand():
    results = [
        {"test_accuracy": 0.60, "test_f1": 0.5, "only_here": 1.0},
        {"test_accuracy": 0.70, "test_f1": 0.4},
        {"test_accuracy": 0.64, "test_f1": 0.9},
    ]
    out = aggregate(results)
    assert set(out) == {"test_accuracy", "test_f1"}  # only metrics every seed reported
    acc = out["test_accuracy"]
    assert acc["median"] == pytest.approx(0.64)
    assert (acc["min"], acc["max"], acc["n"]) == (0.60, 0.70, 3.0)
    assert acc["spread"] == pytest.approx(0.10)
    assert acc["mean"] == pytest.approx(1.94 / 3)
    # sample std: sqrt(sum((x - mean)^2) / (n - 1))
    mean = 1.94 / 3
    expected = (((0.60 - mean) ** 2 + (0.70 - mean) ** 2 + (0.64 - mean) ** 2) / 2) ** 0.5
    assert acc["std"] == pytest.approx(expected)
    assert out["test_f1"]["median"] == pytest.approx(0.5)  # the middle value, not the mean (0.6)


def test_aggregate_even_count_and_single_seed():
    assert aggregate([{"m": 1.0}, {"m": 4.0}, {"m": 2.0}, {"m": 3.0}])["m"]["median"] == 2.5
    one = aggregate([{"m": 0.3}])["m"]
    assert (one["median"], one["spread"], one["std"], one["n"]) == (0.3, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        aggregate([])


def test_summary_table_one_line_per_metric():
    lines = summary_table(aggregate([{"a": 0.5, "b": 1.0}, {"a": 0.7, "b": 1.0}])).splitlines()
    assert lines[0].split() == ["metric", "median", "min", "max", "std", "n"]
    assert lines[1].split() == ["a", "0.6000", "0.5000", "0.7000", "0.1414", "2"]
    assert len(lines) == 3


def test_repeated_seed_is_one_clear_error(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text("model:\n  checkpoint: runs/x\nseeds: [1, 1]\n")
    with pytest.raises(ConfigError, match=r"ft.yaml: .*seeds \[1, 1\] repeat a seed"):
        load_config(FinetuneConfig, config, [])


@pytest.mark.slow  # two fine-tuning runs: ~40 s idle, minutes on a busy 2-core machine
def test_cli_seeds_runs_each_seed_and_logs_the_summary(tiny_checkpoint, tmp_path):
    out = tmp_path / "seeds"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertscale.finetune",
            "--config",
            str(ROOT / "bertscale" / "finetune" / "configs" / "sentiment.yaml"),
            f"model.checkpoint={tiny_checkpoint}",
            "dataset.name=pang_lee",
            "dataset.max_examples=200",
            "train.max_steps=3",
            "train.micro_batch_size=8",
            "train.eval_every=0",
            "seeds=[3,5]",
            f"output_dir={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_seed = {s: json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in (3, 5)}
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [3, 5]
    acc = [per_seed[s]["test_accuracy"] for s in (3, 5)]
    assert summary["aggregated"]["test_accuracy"]["median"] == pytest.approx(sum(acc) / 2)
    assert summary["aggregated"]["test_accuracy"]["spread"] == pytest.approx(abs(acc[0] - acc[1]))
    assert "test_accuracy" in proc.stdout and "median" in proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bertscale-finetune").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"sentiment-seed3", "sentiment-seed5", "sentiment-seeds"}
    assert by_name["sentiment-seed5"].data.params["seed"] == "5"
    metrics = by_name["sentiment-seeds"].data.metrics
    assert metrics["test_accuracy_median"] == pytest.approx(summary["aggregated"]["test_accuracy"]["median"])
    assert metrics["test_accuracy_spread"] == pytest.approx(abs(acc[0] - acc[1]))
