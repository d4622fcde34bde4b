"""Processes the tests start: the pretraining command, sessions that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from bertscale.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
QUIET_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # ranks share 2 cores; logs arrive in order


def deepspeed_launcher(ranks: int) -> list[str]:
    """``deepspeed --num_accelerators N --master_port <free>``: N CPU ranks over gloo."""
    return [str(DEEPSPEED), "--num_accelerators", str(ranks), "--master_port", str(free_port())]


def pretrain_command(
    config_yaml: str, shards: Path, output_dir: Path, *overrides: str, ranks: int = 1
) -> list[str]:
    """``deepspeed ... --module bertscale.pretrain`` (plain ``python -m bertscale.pretrain`` for 1 rank).

    The config is written beside ``output_dir`` as ``{output_dir.name}.yaml``.
    """
    config = output_dir.parent / f"{output_dir.name}.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_yaml)
    args = ["--config", str(config), f"data.shards={shards}", f"output_dir={output_dir}", *overrides]
    if ranks == 1:
        return [sys.executable, "-m", "bertscale.pretrain", *args]
    return [*deepspeed_launcher(ranks), "--module", "bertscale.pretrain", *args]


def run_command(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run to the end from the repository root, output captured; on a timeout the whole tree is killed."""
    env = {**os.environ, **QUIET_ENV}
    pipe = subprocess.PIPE
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            kill_tree(proc)  # ranks a timed-out launcher leaves behind
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def kill_tree(proc: subprocess.Popen | psutil.Process) -> None:
    """SIGKILL a process and all its descendants (launcher, ranks, DataLoader and Ray workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    if isinstance(proc, subprocess.Popen):
        proc.wait(timeout=30)


@contextlib.contextmanager
def launched(cmd: list[str], log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (output to ``log``) in its own session; whatever is left of it is killed at exit."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **QUIET_ENV, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        kill_tree(proc)


def run_to_end(cmd: list[str], log: Path, timeout: float = 400, **env: str) -> int:
    with launched(cmd, log, **env) as proc:
        return proc.wait(timeout=timeout)


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, what: str, timeout: float = 300):
    """Poll ``condition`` every 10 ms until truthy; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before {what}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]
