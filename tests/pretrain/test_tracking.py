"""Tracker: MLflow on a sqlite file, metrics.jsonl, and a dead tracking server never stops training."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from bertscale.runtime.config import MlflowConfig
from bertscale.runtime.tracking import Tracker, peak_flops_per_device

pytestmark = pytest.mark.integration  # the tracker runs git (commit, dirty flag) for the run's tags


def test_sqlite_store_gets_params_metrics_artifacts(tmp_path):
    cfg = MlflowConfig(experiment="unit", run_name="r1")
    tracker = Tracker(cfg, {"optimizer": {"lr": 0.001}, "seed": 3}, output_dir=tmp_path)
    tracker.log_metrics(1, {"loss": 2.5})
    tracker.log_metrics(2, {"loss": 2.0, "lr": 1e-3})
    (tmp_path / "note.txt").write_text("hello")
    tracker.log_artifact(tmp_path / "note.txt")
    tracker.close()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params == {"optimizer.lr": "0.001", "seed": "3"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [
        (1, 2.5),
        (2, 2.0),
    ]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    assert str(tmp_path / "mlartifacts") in run.info.artifact_uri  # beside the run, not ./mlruns
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "lr": 1e-3}]


def test_unreachable_server_warns_once_and_training_goes_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = MlflowConfig(tracking_uri="http://127.0.0.1:9", experiment="x")  # port 9: nothing listens
    with caplog.at_level(logging.WARNING, logger="bertscale"):
        tracker = Tracker(cfg, {"a": 1}, output_dir=tmp_path)
        for step in range(1, 4):
            tracker.log_metrics(step, {"loss": 1.0 / step})
        tracker.log_artifact(tmp_path / "metrics.jsonl")
        tracker.close()
    warnings = [r for r in caplog.records if "MLflow tracking disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # local record kept


def test_other_ranks_track_nothing(tmp_path):
    tracker = Tracker(MlflowConfig(), {"a": 1}, output_dir=tmp_path / "rank1", enabled=False)
    tracker.log_metrics(1, {"loss": 1.0})
    tracker.close()
    assert not (tmp_path / "rank1").exists()


def test_peak_flops():
    assert peak_flops_per_device(2.0) == 2e12
    assert peak_flops_per_device(None) is None  # CPU: unknown peak, so no invented MFU
