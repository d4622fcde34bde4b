"""A running job's faults: preemption signals and steps that never finish (a rank dead or stuck).

Public API:
    PREEMPTED_EXIT                    exit status of a run that checkpointed on a preemption signal
                                      (infra/slurm/pretrain.sbatch requeues the job on it)
    Preempted                         raised by a job after that checkpoint
    Preemption.install()              SIGTERM (Kubernetes, spot) / SIGUSR1 (SLURM ``--signal``) set a flag
    Preemption.agreed(device) -> bool collective: true on every rank once any rank got a signal, so all
                                      ranks stop after the same step
    StepWatchdog(timeout_s, rank)     ``with watchdog.step(n):`` a step still running after timeout_s
                                      prints one line naming the step and rank and ends the process
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later"; nothing else in the job exits with it
STEP_TIMEOUT_EXIT = 3
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised once the checkpoint a preemption signal asked for is written; the CLI exits PREEMPTED_EXIT."""

    exit_status = PREEMPTED_EXIT


class Preemption:
    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> Preemption:
        for sig in SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was signalled (one small all-reduce)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return bool(flag.item())


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """For DataLoader workers: the rank decides when to stop; its workers must outlive the last step."""
    for sig in (*SIGNALS, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class StepWatchdog:
    """Ends this rank when a step outlives ``timeout_s``: a collective waiting on a dead or stuck rank
    would otherwise block forever (NCCL/gloo timeouts come late, and as tracebacks)."""

    def __init__(self, timeout_s: float, rank: int):
        self.timeout_s, self.rank = timeout_s, rank

    @contextlib.contextmanager
    def step(self, step: int, what: str = "step") -> Iterator[None]:
        if self.timeout_s <= 0:
            yield
            return
        timer = threading.Timer(self.timeout_s, self._expire, args=(step, what))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _expire(self, step: int, what: str) -> None:
        print(
            f"error: rank {self.rank}: {what} {step} did not finish within {self.timeout_s:g} s "
            "(engine.collective_timeout_s): a rank is dead or stuck",
            file=sys.stderr,
            flush=True,
        )
        os._exit(STEP_TIMEOUT_EXIT)
