"""``python -m bertscale.finetune --config CONFIG [key=value ...]`` (or ``deepspeed --module bertscale.finetune ...``).

``seeds=[1,2,3]`` runs one fine-tuning per seed and prints the median and spread of each metric.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from bertscale.config import split_cli
from bertscale.errors import run_cli


def main(argv: Sequence[str]) -> None:
    from bertscale.config import load_config
    from bertscale.finetune.config import FinetuneConfig
    from bertscale.finetune.train import main as train

    path, overrides = split_cli(argv, FinetuneConfig, __doc__.strip())
    cfg = load_config(FinetuneConfig, path, overrides)
    if not cfg.seeds:
        train(cfg)
        return
    from bertscale.finetune.seeds import run_seeds, summary_table

    _, aggregated = run_seeds(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\n{cfg.task} over seeds {cfg.seeds} ({cfg.output_dir}/seeds.json):")
        print(summary_table(aggregated), flush=True)


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
