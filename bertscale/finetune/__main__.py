"""``python -m bertscale.finetune --config CONFIG [key=value ...]`` (or ``deepspeed --module bertscale.finetune ...``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from bertscale.config import split_cli
from bertscale.errors import run_cli


def main(argv: Sequence[str]) -> None:
    from bertscale.config import load_config
    from bertscale.finetune.config import FinetuneConfig
    from bertscale.finetune.train import main as train

    path, overrides = split_cli(argv, FinetuneConfig, __doc__.strip())
    train(load_config(FinetuneConfig, path, overrides))


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
