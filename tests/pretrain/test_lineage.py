"""MLflow lineage on a real SQLite store, read back through MlflowClient: tags and description, the
training view, datasets, logged models (checkpoints), the registry, source links, system metrics,
the pipeline's run and the summary table."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bertscale.data_pipeline.schema import MANIFEST_NAME, load_manifest
from bertscale.infra.mlflow_summary import summarize
from bertscale.runtime.config import MlflowConfig
from bertscale.runtime.lineage import manifest_dataset
from bertscale.runtime.tracking import Tracker, find_logged_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # the tracker runs git (commit, dirty flag)


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _tracker(tmp_path: Path, name: str, **kwargs) -> Tracker:
    cfg = MlflowConfig(tracking_uri=_store(tmp_path), experiment="lineage", run_name=name)
    for key, value in kwargs.pop("cfg", {}).items():
        setattr(cfg, key, value)
    return Tracker(cfg, None, output_dir=tmp_path / name, **kwargs)


def test_run_records_code_command_versions_hosts_and_no_secret(tmp_path, monkeypatch):
    secret = "s3cretPW"
    argv = [
        str(REPO / "bertscale" / "pretrain" / "__main__.py"),
        "--config",
        "x.yaml",
        f"mlflow.tracking_uri=http://ml:{secret}@h:5000",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    tracker = _tracker(
        tmp_path, "r", description="**Pretraining** a test", job="pretrain", world_size=4, hosts=["n2", "n1", "n2"],
        cfg={"system_metrics": True, "system_metrics_interval_s": 0.2},
    )  # fmt: skip
    tracker.log_params({"mlflow": {"tracking_uri": f"postgresql://ml:{secret}@db/mlflow"}, "seed": 1})
    time.sleep(1.5)  # a few system-metrics samples
    tracker.close()

    client = MlflowClient(_store(tmp_path))
    experiment = client.get_experiment_by_name("lineage")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    run = client.get_run(tracker.run_id)
    tags = run.data.tags
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["bertscale.git.dirty"] in ("true", "false")
    assert tags["mlflow.note.content"] == "**Pretraining** a test"
    assert tags["bertscale.job"] == "pretrain"
    assert (
        tags["bertscale.command"]
        == "-m bertscale.pretrain --config x.yaml 'mlflow.tracking_uri=http://ml:***@h:5000'"
    )
    assert tags["bertscale.version.torch"] == torch.__version__
    assert {"bertscale.version.deepspeed", "bertscale.version.ray", "bertscale.version.mlflow"} <= set(tags)
    assert tags["bertscale.world_size"] == "4" and tags["bertscale.hosts"] == "n1,n2"
    assert run.data.params["mlflow.tracking_uri"] == "postgresql://ml:***@db/mlflow"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= {
        k.split("/", 1)[0] + "/" + k.rsplit("/", 1)[-1] for k in run.data.metrics
    }, sorted(run.data.metrics)
    assert secret.encode() not in (tmp_path / "mlflow.db").read_bytes()


def test_checkpoints_are_logged_models_with_step_and_eval_metrics(tmp_path):
    step_dirs = [tmp_path / "ckpt" / f"step_{i}" for i in (8, 16)]
    for d in step_dirs:
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"0" * 4096)
    tracker = _tracker(tmp_path, "pre")
    tracker.log_metrics(8, {"loss": 2.0, "eval_mlm_accuracy": 0.25})
    first = tracker.log_model(step_dirs[0], name="pre-step8", step=8, params={"tokens": 100})
    tracker.log_metrics(16, {"loss": 1.5, "eval_mlm_accuracy": 0.5})
    shutil.rmtree(step_dirs[0])  # pruned by keep_last
    second = tracker.log_model(step_dirs[1], name="pre-step16", step=16)
    version = tracker.register(second, step_dirs[1], "bert-lineage-test")
    tracker.close()

    client = MlflowClient(_store(tmp_path))
    run = client.get_run(tracker.run_id)
    assert sorted((o.model_id, o.step) for o in run.outputs.model_outputs) == sorted(
        [(first, 8), (second, 16)]
    )
    m1, m2 = client.get_logged_model(first), client.get_logged_model(second)
    assert m1.source_run_id == m2.source_run_id == tracker.run_id
    assert m1.tags["bertscale.path"] == str(step_dirs[0].resolve()) and m1.tags["bertscale.deleted"] == "true"
    assert m2.tags["bertscale.path"] == str(step_dirs[1].resolve()) and "bertscale.deleted" not in m2.tags
    assert m1.params == {"tokens": "100"}
    assert [(m.key, m.step, m.value) for m in m1.metrics] == [("eval_mlm_accuracy", 8, 0.25)]
    assert [(m.key, m.step, m.value) for m in m2.metrics] == [("eval_mlm_accuracy", 16, 0.5)]
    assert find_logged_model(_store(tmp_path), step_dirs[1]).model_id == second
    # nothing of a checkpoint is copied by default; the registered one is uploaded
    assert "model.safetensors" not in {a.path for a in client.list_logged_model_artifacts(first)}
    assert "model.safetensors" in {a.path for a in client.list_logged_model_artifacts(second)}
    (registered,) = client.search_model_versions("name='bert-lineage-test'")
    assert version == 1 and registered.source == f"models:/{second}" and registered.run_id == tracker.run_id


def test_a_run_started_from_a_logged_checkpoint_links_to_it(tmp_path):
    step_dir = tmp_path / "ckpt" / "step_00000010"
    step_dir.mkdir(parents=True)
    pre = _tracker(tmp_path, "pre", job="pretrain")
    model_id = pre.log_model(step_dir, name="pre-step10", step=10)
    pre.close()
    fine = _tracker(tmp_path, "fine", job="finetune")
    source = fine.start_from(step_dir)
    fine.log_metrics(5, {"loss": 0.7, "test_accuracy": 0.75})
    fine.close()
    elsewhere = _tracker(tmp_path, "scratch", job="finetune")
    assert elsewhere.start_from(tmp_path / "not-logged") is None
    elsewhere.close()

    client = MlflowClient(_store(tmp_path))
    run = client.get_run(fine.run_id)
    assert source.model_id == model_id
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    assert run.data.tags["bertscale.source_run_id"] == pre.run_id
    assert run.data.tags["bertscale.source_model_id"] == model_id
    rows = {r["run"]: r for r in summarize(_store(tmp_path))["finetune"]}
    assert rows["fine"]["source"] == f"pre step 10 ({model_id})"
    assert rows["fine"]["test_accuracy"] == 0.75
    assert rows["scratch"]["source"] == str((tmp_path / "not-logged").resolve())


def test_the_manifest_is_the_dataset_input_of_a_run(tiny_shards, tmp_path):
    tracker = _tracker(tmp_path, "pre")
    tracker.log_dataset(lambda: manifest_dataset(tiny_shards))
    tracker.close()

    run = MlflowClient(_store(tmp_path)).get_run(tracker.run_id)
    (entry,) = run.inputs.dataset_inputs
    sha = hashlib.sha256((tiny_shards / MANIFEST_NAME).read_bytes()).hexdigest()
    manifest = load_manifest(tiny_shards)
    assert entry.dataset.digest == sha[:32]
    assert json.loads(entry.dataset.source)["uri"] == str(tiny_shards.resolve())
    assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": "training"}
    profile = json.loads(entry.dataset.profile)
    assert profile["manifest_sha256"] == sha and profile["tokenizer_sha256"] == manifest.tokenizer_sha256
    train = manifest.splits["train"]
    assert (profile["train_shards"], profile["train_samples"], profile["train_tokens"]) == (
        len(train.shards), train.samples, train.tokens,
    )  # fmt: skip


def test_pipeline_logs_its_own_run(tiny_shards, tiny_config, tmp_path):
    from bertscale.data_pipeline.tracking import track_pipeline

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    cfg = tiny_config(shards)
    track_pipeline(cfg, shards, {"read_clean": 1.0, "write": 0.5}, 2.0)  # off by default: nothing
    assert not (tmp_path / "shards-pipeline-run").exists()
    cfg.mlflow.enabled, cfg.mlflow.tracking_uri = True, _store(tmp_path)
    track_pipeline(cfg, shards, {"read_clean": 1.0, "write": 0.5}, 2.0)

    client = MlflowClient(_store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("bertscale-data").experiment_id])
    manifest = load_manifest(shards)
    metrics = run.data.metrics
    assert (
        metrics["documents"] == manifest.inputs["documents"]
        and metrics["tokens"] == manifest.inputs["tokens"]
    )
    assert metrics["train_samples"] == manifest.splits["train"].samples
    assert metrics["skipped_inputs"] == len(manifest.skipped)
    assert (metrics["time_read_clean_s"], metrics["time_total_s"]) == (1.0, 2.0)
    assert run.data.tags["bertscale.job"] == "data_pipeline"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [MANIFEST_NAME]
    (entry,) = run.inputs.dataset_inputs
    sha = hashlib.sha256((shards / MANIFEST_NAME).read_bytes()).hexdigest()
    assert entry.dataset.digest == sha[:32]  # the digest pretraining runs on these shards log


def test_tracking_off_or_down_logs_no_model(tmp_path):
    tracker = Tracker(MlflowConfig(enabled=False), None, output_dir=tmp_path)
    assert tracker.log_model(tmp_path, name="x", step=1) is None and tracker.start_from(tmp_path) is None
    tracker.log_dataset(lambda: pytest.fail("no dataset is built when tracking is off"))
    tracker.close()
