"""benchmarks/finetune_pretrained_vs_scratch.py: two tracked runs that differ only in the encoder init."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "finetune_pretrained_vs_scratch.py"


def _module():
    spec = importlib.util.spec_from_file_location("finetune_pretrained_vs_scratch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_gives_median_range_and_paired_difference():
    text = _module().table(
        {
            "pretrained": {
                1: {"test_accuracy": 0.75, "test_loss": 0.5},
                2: {"test_accuracy": 0.70, "test_loss": 0.5},
                3: {"test_accuracy": 0.80, "test_loss": 0.5},
            },
            "random": {
                1: {"test_accuracy": 0.60, "x": 1.0},
                2: {"test_accuracy": 0.66, "x": 1.0},
                3: {"test_accuracy": 0.62, "x": 1.0},
            },
        }
    )
    lines = text.splitlines()
    assert lines[0].startswith("over 3 seed(s) [1, 2, 3]")
    assert lines[1].split() == ["metric", "pretrained", "random", "init", "difference"]
    # medians 0.75 and 0.62; per-seed differences 0.15, 0.04, 0.18 -> median 0.15
    assert lines[2].split() == [
        "test_accuracy",
        "0.7500",
        "[0.7000,",
        "0.8000]",
        "0.6200",
        "[0.6000,",
        "0.6600]",
        "+0.1500",
    ]
    assert len(lines) == 3


@pytest.mark.slow
def test_benchmark_runs_both_inits_into_one_mlflow_store(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--config",
            str(ROOT / "bertscale" / "finetune" / "configs" / "sentiment.yaml"),
            f"model.checkpoint={tiny_checkpoint}",
            "dataset.name=pang_lee",
            "train.max_steps=6",
            "train.micro_batch_size=8",
            "train.eval_every=3",
            "seeds=[1,2]",
            f"output_dir={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrained" in proc.stdout and "random init" in proc.stdout and "test_accuracy" in proc.stdout
    results = json.loads((out / "comparison.json").read_text())
    assert set(results) == {"pretrained", "random"} and set(results["random"]) == {"1", "2"}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bertscale-finetune").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {
        f"sentiment-{i}-{s}" for i in ("pretrained", "random") for s in ("seed1", "seed2", "seeds")
    }
    assert by_name["sentiment-pretrained-seed1"].data.params["model.init"] == "pretrained"
    assert by_name["sentiment-random-seed2"].data.params["model.init"] == "random"
    for init in ("pretrained", "random"):
        assert by_name[f"sentiment-{init}-seed2"].data.metrics["test_accuracy"] == pytest.approx(
            results[init]["2"]["test_accuracy"]
        )
    # same data, same head init and batches; only the encoder differs, so the first eval differs
    first = [
        min(
            client.get_metric_history(by_name[f"sentiment-{i}-seed1"].info.run_id, "eval_loss"),
            key=lambda m: m.step,
        )
        for i in results
    ]
    assert first[0].step == first[1].step == 0 and first[0].value != first[1].value
