"""Multi-node launch: the deepspeed command per mode, and a real 2-"node" launch on 127.0.0.1."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.errors import ConfigError
from infra.hostfile import read_hostfile
from infra.launch import deepspeed_command, node_rank_from_env
from infra.ray_submit import free_port

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def test_ssh_and_no_ssh_commands():
    program = ["--module", "pretrain", "--config", "c.yaml", "max_steps=5"]
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


def test_cli_dry_run_from_slurm_env(tmp_path):
    hostfile = tmp_path / "hostfile"
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "4"}
    run = subprocess.run(
        [sys.executable, "-m", "infra.launch", "--no_ssh", "--write_hostfile", str(hostfile), "--dry_run",
         "--", "--module", "pretrain", "--config", "c.yaml"],
        env=env, capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    cmd = run.stdout.split()
    assert cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--master_addr") + 1] == "gpu07"  # node 0 of the allocation
    assert cmd[-4:] == ["--module", "pretrain", "--config", "c.yaml"]
    assert read_hostfile(hostfile) == [("gpu07", 4), ("gpu08", 4)]


def test_cli_reports_bad_hostfile(tmp_path):
    bad = tmp_path / "hostfile"
    bad.write_text("node01 slots=two\n")
    run = subprocess.run(
        [sys.executable, "-m", "infra.launch", "--hostfile", str(bad), "--", "x.py"],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {bad}:1: expected 'HOST slots=N'")


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.distributed
def test_two_node_no_ssh_launch_on_loopback(tmp_path):
    """Two launchers, node ranks 0 and 1, one rank each: one gloo world of size 2 across "nodes"."""
    port = free_port()
    hostfile = tmp_path / "hostfile"
    procs = []
    try:
        for node_rank in (0, 1):
            cmd = [
                sys.executable, "-m", "infra.launch", "--hosts", "node0", "node1", "--slots", "1",
                "--write_hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
                "--master_addr", "127.0.0.1", "--master_port", str(port), "--num_accelerators", "1",
                "--", str(HERE / "allreduce_script.py"), str(tmp_path),
            ]  # fmt: skip
            log = open(tmp_path / f"node{node_rank}.log", "w")  # noqa: SIM115
            procs.append(
                subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
            log.close()
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            _kill_group(proc)
    logs = "\n".join((tmp_path / f"node{r}.log").read_text()[-2000:] for r in (0, 1))
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "--no_ssh --node_rank 1 --master_addr 127.0.0.1" in (tmp_path / "node1.log").read_text()
    records = sorted(
        (json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")), key=lambda r: r["rank"]
    )
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 for r in records)
    assert all(r["sum"] == 1.0 + 2.0 for r in records)  # rank0 contributes 1, rank1 contributes 2
    assert [r["node_rank"] for r in records] == [0, 1]  # one rank per "node"
    assert all(r["local_rank"] == 0 for r in records)
    assert all(r["master"] == f"127.0.0.1:{port}" for r in records)
