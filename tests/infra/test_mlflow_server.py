"""A real MLflow server (SQLite + local artifact store) started by bertscale.infra.mlflow_server."""

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest

from bertscale.errors import ConfigError
from bertscale.infra.mlflow_server import (
    MlflowServerConfig,
    backend_from_args,
    redact_uri,
    running_server,
    server_command,
    sqlite_uri,
)
from bertscale.ports import free_port

REPO = Path(__file__).parents[2]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_redact_uri():
    assert redact_uri("postgresql://ml:s3cret@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
    assert redact_uri("postgresql+psycopg2://ml:s3cret@db/mlflow?sslmode=require").count("s3cret") == 0
    assert redact_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_backend_uri_from_env_stays_out_of_argv(tmp_path):
    uri = backend_from_args(None, "BERTSCALE_TEST_DB", {"BERTSCALE_TEST_DB": "postgresql://u:pw@db/ml"})
    cmd, env = server_command(MlflowServerConfig(uri, str(tmp_path / "art")))
    assert not any("pw" in part for part in cmd)  # argv is world-readable through ps
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://u:pw@db/ml"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    with pytest.raises(ConfigError, match=r"\$BERTSCALE_TEST_DB is not set"):
        backend_from_args(None, "BERTSCALE_TEST_DB", {})
    with pytest.raises(ConfigError, match=r"'http://u:\*\*\*@x': expected sqlite"):
        server_command(MlflowServerConfig("http://u:pw@x", str(tmp_path)))


@pytest.mark.integration
def test_cli_reports_missing_secret_env():
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.mlflow_server", "--backend-uri-env", "BERTSCALE_NO_SUCH_VAR"],
        capture_output=True, text=True, check=False, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "BERTSCALE_NO_SUCH_VAR"},
    )  # fmt: skip
    assert run.returncode == 2
    assert "BERTSCALE_NO_SUCH_VAR is not set" in run.stderr


@pytest.mark.integration
def test_server_receives_a_run_over_http(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = MlflowServerConfig(
        sqlite_uri(tmp_path / "mlflow.db"), str(tmp_path / "artifacts"), port=free_port()
    )
    artifact = tmp_path / "notes.txt"
    artifact.write_text("hello from the tracking test\n")
    with running_server(cfg, log_path=tmp_path / "server.log", timeout=150) as proc:
        # Every listening socket of the server's processes is on loopback, on the configured port.
        listening = [
            conn.laddr
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for conn in p.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening, (tmp_path / "server.log").read_text()[-2000:]
        assert {(addr.ip, addr.port) for addr in listening} == {("127.0.0.1", cfg.port)}

        client = MlflowClient(tracking_uri=cfg.url)
        experiment_id = client.create_experiment("infra-test")
        run = client.create_run(experiment_id, run_name="loopback")
        run_id = run.info.run_id
        client.log_param(run_id, "hidden_size", "128")
        for step, loss in enumerate([2.5, 1.75, 1.25]):
            client.log_metric(run_id, "loss", loss, step=step)
        mlflow.set_tracking_uri(cfg.url)
        client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id)

        # Read it back through the REST API, not the client that wrote it.
        got = _get(f"{cfg.url}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        assert got["info"]["status"] == "FINISHED"
        assert {p["key"]: p["value"] for p in got["data"]["params"]} == {"hidden_size": "128"}
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "loss"})
        history = _get(f"{cfg.url}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
        assert [(m["step"], m["value"]) for m in history] == [(0, 2.5), (1, 1.75), (2, 1.25)]
        files = _get(f"{cfg.url}/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]
        assert [f["path"] for f in files] == ["notes.txt"]
        query = urllib.parse.urlencode({"run_uuid": run_id, "path": "notes.txt"})
        with urllib.request.urlopen(f"{cfg.url}/get-artifact?{query}", timeout=10) as resp:
            assert resp.read() == artifact.read_bytes()
        # The server (not the client) stored the artifact, under the configured destination.
        stored = list((tmp_path / "artifacts").rglob("notes.txt"))
        assert len(stored) == 1 and stored[0].read_bytes() == artifact.read_bytes()
        pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    assert proc.poll() is not None
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


@pytest.mark.integration
def test_lineage_over_http_dataset_models_registry_and_links(tmp_path):
    """The tracker against a real server: dataset input, logged models, the registry (artifacts
    proxied by the server) and the fine-tune -> checkpoint link, read back by another client."""
    from mlflow.tracking import MlflowClient

    from bertscale.runtime.config import MlflowConfig
    from bertscale.runtime.lineage import file_dataset
    from bertscale.runtime.tracking import Tracker

    cfg = MlflowServerConfig(
        sqlite_uri(tmp_path / "mlflow.db"), str(tmp_path / "artifacts"), port=free_port()
    )
    step_dir = tmp_path / "run" / "checkpoints" / "step_00000004"
    step_dir.mkdir(parents=True)
    (step_dir / "model.safetensors").write_bytes(b"w" * 1000)
    with running_server(cfg, log_path=tmp_path / "server.log", timeout=150):
        pre = Tracker(
            MlflowConfig(tracking_uri=cfg.url, experiment="http-pre"), None, output_dir=tmp_path / "pre"
        )
        pre.log_dataset(lambda: file_dataset("weights", [step_dir / "model.safetensors"], {"rows": 1}))
        pre.log_metrics(4, {"eval_mlm_accuracy": 0.5})
        model_id = pre.log_model(step_dir, name="pre-step4", step=4)
        assert pre.register(model_id, step_dir, "http-bert") == 1
        pre.close()
        fine = Tracker(
            MlflowConfig(tracking_uri=cfg.url, experiment="http-fine"), None, output_dir=tmp_path / "fine"
        )
        fine.start_from(step_dir)
        fine.close()

        client = MlflowClient(tracking_uri=cfg.url)
        run = client.get_run(pre.run_id)
        assert run.inputs.dataset_inputs[0].dataset.name == "weights"
        assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model_id, 4)]
        assert client.get_logged_model(model_id).tags["bertscale.path"] == str(step_dir.resolve())
        (version,) = client.search_model_versions("name='http-bert'")
        assert version.source == f"models:/{model_id}" and version.run_id == pre.run_id
        assert [m.model_id for m in client.get_run(fine.run_id).inputs.model_inputs] == [model_id]
        assert client.get_run(fine.run_id).data.tags["bertscale.source_run_id"] == pre.run_id
    # the registered files went through the server into its artifact store
    assert len(list((tmp_path / "artifacts").rglob("model.safetensors"))) == 1
