"""Run a command under a budget of CPU seconds summed over its whole process tree.

Public API:
    run_under_budget(cmd, *, env, log, budget_s, per_wall_s=None) -> BudgetRun
        starts ``cmd`` in its own session with SIGUSR1 ignored (launchers survive it; the training
        processes install their own handler), samples the tree's CPU time every ``interval`` s and,
        once ``budget_s`` is spent, sends SIGUSR1 to every process of the tree (torchrun starts its
        workers in sessions of their own, so not to a process group): the trainers checkpoint the
        step they are in and exit. ``per_wall_s`` (devices) makes the clock wall seconds x devices
        instead (GPUs: the host's CPU time says little about a GPU's work).
    BudgetRun.clock_at(wall_time) -> float   the clock when the wall clock read ``wall_time``
                                             (e.g. a checkpoint file's mtime), interpolated

The clock counts user + system time of every process of the tree (launcher, ranks, DataLoader
workers), a process that ended with its last sampled value; the exact total of the reaped tree
(getrusage of children) is kept beside it as ``total_cpu_s``.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

STOP_SIGNAL = signal.SIGUSR1  # what our pretraining (and the transformers side) take as "checkpoint and stop"


@dataclass
class BudgetRun:
    returncode: int
    stopped: bool  # the budget ran out and the stop signal was sent
    wall_s: float
    total_cpu_s: float  # every process of the tree, exact (rusage of reaped children)
    times: list[float] = field(default_factory=list)  # wall-clock sample times (time.time())
    clock: list[float] = field(default_factory=list)  # the budget clock at those times

    def clock_at(self, wall_time: float) -> float:
        i = bisect.bisect_left(self.times, wall_time)
        if i == 0:
            return self.clock[0] if self.clock else 0.0
        if i >= len(self.times):
            return self.clock[-1]
        t0, t1, c0, c1 = self.times[i - 1], self.times[i], self.clock[i - 1], self.clock[i]
        return c0 + (c1 - c0) * (wall_time - t0) / max(t1 - t0, 1e-9)


def _ignore_stop_signal() -> None:
    signal.signal(STOP_SIGNAL, signal.SIG_IGN)  # inherited across exec by launchers that do not handle it


def tree_cpu(root: psutil.Process, seen: dict[int, float]) -> float:
    """CPU seconds of ``root`` and its descendants; ``seen`` keeps ended processes' last values."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
    return sum(seen.values())


def signal_tree(root: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_under_budget(
    cmd: list[str],
    *,
    env: dict[str, str],
    log: Path,
    budget_s: float,
    per_wall_s: int | None = None,
    interval: float = 0.25,
    grace_s: float = 600.0,
    cwd: Path | None = None,
) -> BudgetRun:
    before = _children_cpu()
    start = time.time()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_ignore_stop_signal,
        )  # fmt: skip
    run = BudgetRun(returncode=-1, stopped=False, wall_s=0.0, total_cpu_s=0.0)
    root, seen = psutil.Process(proc.pid), {}
    stopped_at = None
    try:
        while proc.poll() is None:
            now = time.time()
            value = (now - start) * per_wall_s if per_wall_s else tree_cpu(root, seen)
            run.times.append(now)
            run.clock.append(value)
            if stopped_at is None and value >= budget_s:
                signal_tree(root, STOP_SIGNAL)
                stopped_at, run.stopped = now, True
                print(f"budget spent ({value:.0f} s): stop signal sent", flush=True)
            if stopped_at is not None and now - stopped_at > grace_s:
                raise TimeoutError(
                    f"{cmd[0]} did not stop within {grace_s:.0f} s of the stop signal (log: {log})"
                )
            time.sleep(interval)
    finally:
        signal_tree(root, signal.SIGKILL)  # whatever the run left behind (nothing, if it ended well)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run.returncode, run.wall_s = proc.returncode, time.time() - start
    run.total_cpu_s = _children_cpu() - before
    return run
