"""What pretraining buys: the same fine-tuning from a pretrained checkpoint and from random init.

    python benchmarks/finetune_pretrained_vs_scratch.py --config bertscale/finetune/configs/sentiment.yaml \\
        model.checkpoint=runs/pretrain [key=value ...]

Both runs share everything (architecture, tokenizer, data split, head init, batches, schedule, seed)
except the encoder's initial weights: ``model.init=pretrained`` vs ``model.init=random``. They are
logged to one MLflow store (``{output_dir}/mlflow.db`` unless mlflow.tracking_uri is set) as runs
``<run_name>-pretrained`` and ``<run_name>-random``; the table is printed and written to
``{output_dir}/comparison.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bertscale.atomic import atomic_write_text
from bertscale.config import load_config, split_cli
from bertscale.errors import ConfigError, run_cli
from bertscale.finetune.config import FinetuneConfig
from bertscale.finetune.train import main as finetune

INITS = ("pretrained", "random")


def compare(cfg: FinetuneConfig) -> dict[str, dict[str, float]]:
    if cfg.model.checkpoint is None:
        raise ConfigError("model.checkpoint is required: it is the pretrained side of the comparison")
    root = cfg.output_path
    uri = cfg.mlflow.tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    results = {}
    for init in INITS:
        run_cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, init=init),
            mlflow=dataclasses.replace(
                cfg.mlflow, tracking_uri=uri, run_name=f"{cfg.mlflow.run_name or cfg.task}-{init}"
            ),
            output_dir=str(root / init),
        )
        results[init] = finetune(run_cfg)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    names = sorted(set.intersection(*(set(r) for r in results.values())))
    lines = [f"{'metric':<22}{'pretrained':>12}{'random init':>13}{'difference':>12}"]
    for name in names:
        a, b = results["pretrained"][name], results["random"][name]
        lines.append(f"{name:<22}{a:>12.4f}{b:>13.4f}{a - b:>+12.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    path, overrides = split_cli(argv)
    cfg = load_config(FinetuneConfig, path, overrides)
    results = compare(cfg)
    atomic_write_text(Path(cfg.output_dir) / "comparison.json", json.dumps(results, indent=2) + "\n")
    print(f"\n{cfg.task} on {cfg.dataset.name or cfg.dataset.path}, base checkpoint {cfg.model.checkpoint}")
    print(table(results), flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
