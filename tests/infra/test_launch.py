"""Multi-node launch: the deepspeed command per mode, and a real 2-"node" launch on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.errors import ConfigError
from bertscale.infra.hostfile import read_hostfile
from bertscale.infra.launch import deepspeed_command, node_rank_from_env
from bertscale.infra.ray_submit import free_port

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def test_ssh_and_no_ssh_commands():
    program = ["--module", "bertscale.pretrain", "--config", "c.yaml", "max_steps=5"]
    ssh = deepspeed_command("hf", 2, program, master_addr="node01")
    assert ssh == [
        "deepspeed", "--hostfile", "hf", "--num_nodes", "2",
        "--master_addr", "node01", "--master_port", "29500", *program,
    ]  # fmt: skip
    per_node = deepspeed_command(
        "hf", 2, program, master_addr="node01", master_port=1234, no_ssh=True, node_rank=1, num_accelerators=4
    )
    assert per_node[per_node.index("--no_ssh") :][:3] == ["--no_ssh", "--node_rank", "1"]
    assert per_node[per_node.index("--num_accelerators") + 1] == "4"
    assert per_node[-len(program) :] == program


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"no_ssh": True}, "needs a node rank"),
        ({"no_ssh": True, "node_rank": 2}, "outside 0..1"),
        ({"master_port": 70000}, "master_port"),
        ({"num_accelerators": 0}, "num_accelerators"),
    ],
)
def test_command_rejects(kwargs, problem):
    with pytest.raises(ConfigError, match=problem):
        deepspeed_command("hf", 2, ["train.py"], master_addr="a", **kwargs)
    with pytest.raises(ConfigError, match="nothing to launch"):
        deepspeed_command("hf", 2, [], master_addr="a")


def test_node_rank_from_scheduler_env():
    assert node_rank_from_env({"SLURM_NODEID": "3", "NODE_RANK": "1"}) == 3
    assert node_rank_from_env({"JOB_COMPLETION_INDEX": "2"}) == 2
    assert node_rank_from_env({}) is None
    with pytest.raises(ConfigError, match="SLURM_NODEID"):
        node_rank_from_env({"SLURM_NODEID": "x"})


@pytest.mark.integration
def test_cli_dry_run_from_slurm_env(tmp_path):
    hostfile = tmp_path / "hostfile"
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "4"}
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.launch", "--no_ssh", "--write_hostfile", str(hostfile), "--dry_run",
         "--", "--module", "bertscale.pretrain", "--config", "c.yaml"],
        env=env, capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    cmd = run.stdout.split()
    assert cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--master_addr") + 1] == "gpu07"  # node 0 of the allocation
    assert cmd[-4:] == ["--module", "bertscale.pretrain", "--config", "c.yaml"]
    assert read_hostfile(hostfile) == [("gpu07", 4), ("gpu08", 4)]


@pytest.mark.integration
def test_cli_reports_bad_hostfile(tmp_path):
    bad = tmp_path / "hostfile"
    bad.write_text("node01 slots=two\n")
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.launch", "--hostfile", str(bad), "--", "x.py"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {bad}:1: expected 'HOST slots=N'")


def launch_two_nodes(tmp_path: Path, program: list[str], timeout: float = 120) -> list[str]:
    """Start node ranks 0 and 1 (one rank each) via bertscale.infra.launch --no_ssh on 127.0.0.1; their logs."""
    port = free_port()
    procs = []
    try:
        for node_rank in (0, 1):
            cmd = [
                sys.executable, "-m", "bertscale.infra.launch", "--hosts", "node0", "node1", "--slots", "1",
                "--write_hostfile", str(tmp_path / "hostfile"), "--no_ssh", "--node_rank", str(node_rank),
                "--master_addr", "127.0.0.1", "--master_port", str(port), "--num_accelerators", "1",
                "--", *program,
            ]  # fmt: skip
            with open(tmp_path / f"node{node_rank}.log", "w") as log:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
                procs.append(
                    subprocess.Popen(
                        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:  # this launcher's whole process group, nothing else
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert f"--no_ssh --node_rank 1 --master_addr 127.0.0.1 --master_port {port}" in logs[1]
    return logs


@pytest.mark.distributed
def test_two_node_no_ssh_launch_on_loopback(tmp_path):
    """Two launchers, node ranks 0 and 1, one rank each: one gloo world of size 2 across "nodes"."""
    logs = launch_two_nodes(tmp_path, [str(HERE / "allreduce_script.py"), str(tmp_path)])
    records = sorted(
        (json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")), key=lambda r: r["rank"]
    )
    assert [r["rank"] for r in records] == [0, 1], logs
    assert all(r["world_size"] == 2 for r in records)
    assert all(r["sum"] == 1.0 + 2.0 for r in records)  # rank0 contributes 1, rank1 contributes 2
    assert [r["node_rank"] for r in records] == [0, 1]  # one rank per "node"
    assert all(r["local_rank"] == 0 for r in records)
    assert len({r["master"] for r in records}) == 1 and records[0]["master"].startswith("127.0.0.1:")


PRETRAIN_CONFIG = """
model: {hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 128,
        max_position_embeddings: 64}
data: {micro_batch_size: 8, masking: dynamic, num_workers: 0}
optimizer: {lr: 3e-3}
engine: {zero_stage: 2}
eval: {every: 0, max_batches: 2}
checkpoint: {save_every: 0}
metrics: {log_every: 1}
mlflow: {enabled: true, experiment: infra-loopback}
max_steps: 4
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_two_nodes_logging_to_mlflow_server(tmp_path, tiny_shards):
    """The cluster recipe on loopback: an MLflow server + `--no_ssh` pretraining on two "nodes"."""
    from mlflow.tracking import MlflowClient

    from bertscale.infra.mlflow_server import MlflowServerConfig, running_server, sqlite_uri

    config = tmp_path / "bertscale.pretrain.yaml"
    config.write_text(PRETRAIN_CONFIG)
    server = MlflowServerConfig(
        sqlite_uri(tmp_path / "mlflow.db"), str(tmp_path / "artifacts"), port=free_port()
    )
    with running_server(server, log_path=tmp_path / "mlflow.log", timeout=150):
        program = ["--module", "bertscale.pretrain", "--config", str(config), f"data.shards={tiny_shards}",
                   f"output_dir={tmp_path / 'run'}", f"mlflow.tracking_uri={server.url}"]  # fmt: skip
        launch_two_nodes(tmp_path, program, timeout=400)
        client = MlflowClient(tracking_uri=server.url)
        (run,) = client.search_runs([client.get_experiment_by_name("infra-loopback").experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["world_size"] == "2"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert steps == [1, 2, 3, 4]
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
