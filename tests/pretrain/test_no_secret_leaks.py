"""A tracking URI with credentials: the password reaches no output, file or MLflow record.

Real parts: `mlflow server` on 127.0.0.1 (bertscale.infra.mlflow_server), `python -m
bertscale.pretrain` as a user runs it, MLflow's REST API read back by a fresh client.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.infra.mlflow_server import MlflowServerConfig, running_server, sqlite_uri
from bertscale.infra.ray_submit import free_port

REPO = Path(__file__).parents[2]
SECRET = "Hunter2-s3cret-Pw"
CONFIG = """
model: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, max_position_embeddings: 64}
data: {micro_batch_size: 4, num_workers: 0}
engine: {zero_stage: 0}
checkpoint: {save_every: 0}
eval: {every: 0, max_batches: 1}
metrics: {log_every: 1}
max_steps: 2
"""


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow  # an MLflow server start + a pretraining process: ~40 s idle
def test_password_in_tracking_uri_reaches_no_output_file_or_mlflow_record(tmp_path, synthetic_shards):
    from mlflow.tracking import MlflowClient

    server = MlflowServerConfig(
        sqlite_uri(tmp_path / "server.db"), str(tmp_path / "artifacts"), port=free_port()
    )
    config = tmp_path / "pretrain.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    with running_server(server, log_path=tmp_path / "server.log", timeout=150):
        uri = f"http://alice:{SECRET}@127.0.0.1:{server.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        proc = subprocess.run(
            [sys.executable, "-m", "bertscale.pretrain", "--config", str(config),
             f"data.shards={synthetic_shards}", f"output_dir={out}", f"mlflow.tracking_uri={uri}",
             "mlflow.experiment=secrets"],
            cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        output = proc.stdout + proc.stderr
        assert "MLflow run" in output and f"alice:***@127.0.0.1:{server.port}" not in output
        assert SECRET not in output

        client = MlflowClient(tracking_uri=server.url)
        (run,) = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["mlflow.tracking_uri"] == f"http://alice:***@127.0.0.1:{server.port}"
        records = [*run.data.params.values(), *run.data.tags.values(), *map(str, run.data.metrics)]
        assert not [value for value in records if SECRET in value]
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded")))
        assert {"config.yaml", "metrics.jsonl"} <= {p.name for p in downloaded.iterdir()}
        assert _files_holding(downloaded, SECRET.encode()) == []
    assert (out / "checkpoints" / "latest").is_file()
    # the run dir (config.yaml, checkpoint config.yaml, ...), the server's store and its log
    assert _files_holding(tmp_path, SECRET.encode()) == []
