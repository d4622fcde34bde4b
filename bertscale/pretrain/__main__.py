"""``deepspeed --module bertscale.pretrain --config CONFIG [key=value ...]`` (or ``python -m bertscale.pretrain ...``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bertscale.config import split_cli
from bertscale.errors import run_cli


def main(argv: Sequence[str]) -> None:
    from bertscale.pretrain.config import PretrainConfig, load_pretrain_config
    from bertscale.pretrain.train import main as train

    path, overrides = split_cli(argv, PretrainConfig, __doc__.strip())
    train(load_pretrain_config(path, overrides))


def cli() -> None:
    from bertscale.runtime.faults import Preempted

    try:
        sys.exit(run_cli(main))
    except Preempted as stop:  # checkpointed on SIGTERM/SIGUSR1: the scheduler requeues on this status
        sys.exit(stop.exit_status)


if __name__ == "__main__":
    cli()
