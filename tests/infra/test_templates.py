"""Cluster templates: valid YAML / bash, and consistent with our CLIs (run them with --dry_run)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[2]
INFRA = REPO / "infra"
SCRIPTS = [*sorted(INFRA.glob("slurm/*.sbatch")), INFRA / "mlflow_server.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.integration
def test_shell_scripts_parse(script):
    run = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


def _launch_line(script: Path) -> str:
    """The `python -m bertscale.infra.launch ...` command of a batch script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "python -m bertscale.infra.launch" in ln]
    return line[line.index("python -m bertscale.infra.launch") :]


@pytest.mark.integration
def test_slurm_pretrain_runs_our_launcher(tmp_path):
    """The sbatch's launch line, on node 1 of a 2-node allocation, yields the right deepspeed command."""
    line = _launch_line(INFRA / "slurm" / "pretrain.sbatch").replace(
        "python", shlex.quote(sys.executable), 1
    )
    env = {
        **os.environ,
        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "8",
        "SLURM_JOB_ID": "42", "MASTER_ADDR": "gpu07", "MASTER_PORT": "20042",
    }  # fmt: skip
    line = line.replace(" -- --module", " --dry_run -- --module")
    script = f"set -- bertscale/pretrain/configs/tiny.yaml max_steps=5; CONFIG=$1; shift; {line}"
    run = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    cmd = run.stdout.strip().splitlines()[-1].split()
    assert cmd[cmd.index("--no_ssh") + 1 : cmd.index("--no_ssh") + 3] == ["--node_rank", "1"]
    assert cmd[cmd.index("--master_addr") + 1 :][:3] == ["gpu07", "--master_port", "20042"]
    assert cmd[cmd.index("--num_nodes") + 1] == "2"
    assert cmd[-5:] == [
        "--module",
        "bertscale.pretrain",
        "--config",
        "bertscale/pretrain/configs/tiny.yaml",
        "max_steps=5",
    ]
    assert (tmp_path / "runs/slurm/hostfile.42").read_text() == "gpu07 slots=8\ngpu08 slots=8\n"


def test_slurm_scripts_use_real_configs():
    for script in sorted(INFRA.glob("slurm/*.sbatch")):
        text = script.read_text()
        assert re.search(r"^#SBATCH --nodes=\d+$", text, re.M), script
        for config in re.findall(r"sbatch \S+ ((?:pretrain|data_pipeline)/configs/\S+\.yaml)", text):
            assert (REPO / config).is_file(), f"{script.name} names missing {config}"


@pytest.mark.integration
def test_k8s_pretrain_job_runs_our_launcher(tmp_path):
    service, job = yaml.safe_load_all((INFRA / "k8s" / "pretrain-job.yaml").read_text())
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "bertscale.infra.launch"]
    config = command[command.index("--config") + 1]
    assert (REPO / config).is_file()
    nodes = job["spec"]["completions"]
    assert job["spec"]["parallelism"] == nodes

    # Pod 1 of the indexed job: node rank from JOB_COMPLETION_INDEX, rendezvous on pod 0's DNS name.
    env = {**os.environ, "JOB_COMPLETION_INDEX": "1"}
    argv = [sys.executable, *command[1:3], "--dry_run", *command[3:]]
    run = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    cmd = run.stdout.strip().splitlines()[-1].split()
    assert cmd[cmd.index("--num_nodes") + 1] == str(nodes)
    assert cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--master_addr") + 1] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    port = int(cmd[cmd.index("--master_port") + 1])
    assert port in [p["port"] for p in service["spec"]["ports"]]
    assert port in [p["containerPort"] for p in container["ports"]]


def test_kuberay_cluster():
    (cluster,) = yaml.safe_load_all((INFRA / "k8s" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = [head, *cluster["spec"]["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1  # head and workers run the same code
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]


def test_ray_cluster_launcher_config():
    cfg = yaml.safe_load((INFRA / "ray" / "cluster.yaml").read_text())
    assert {
        "cluster_name",
        "provider",
        "auth",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    } <= set(cfg)
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert all("RAY_AUTH_MODE=token" in c for c in cfg["worker_start_ray_commands"] if "ray start" in c)


def test_preempted_runs_are_requeued_on_the_exit_status_training_uses():
    """SLURM and Kubernetes retry exactly the status a preempted (checkpointed) run exits with."""
    from bertscale.runtime.faults import PREEMPTED_EXIT

    sbatch = (INFRA / "slurm" / "pretrain.sbatch").read_text()
    assert "#SBATCH --signal=USR1@" in sbatch and "#SBATCH --requeue" in sbatch
    assert f'if [ "$rc" -eq {PREEMPTED_EXIT} ]; then' in sbatch and 'scontrol requeue "$SLURM_JOB_ID"' in sbatch
    _, job = yaml.safe_load_all((INFRA / "k8s" / "pretrain-job.yaml").read_text())
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "pretrain", "operator": "In",
            "values": [PREEMPTED_EXIT]}} in rules  # fmt: skip
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "kill -USR1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
