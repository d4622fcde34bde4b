"""What pretraining buys: the same fine-tuning from a pretrained checkpoint and from random init, over seeds.

    python benchmarks/finetune_pretrained_vs_scratch.py --config bertscale/finetune/configs/sentiment.yaml \\
        model.checkpoint=runs/pretrain 'seeds=[1,2,3]' [key=value ...]

Both sides share everything (architecture, tokenizer, and per seed: data split, head init,
batches, schedule) except the encoder's initial weights: ``model.init=pretrained`` vs
``model.init=random``. Each side runs every seed (``seeds``; default: the one ``seed``) through
bertscale.finetune.seeds, into one MLflow store (``{output_dir}/mlflow.db`` unless
mlflow.tracking_uri is set) as runs ``<run_name>-<init>-seed<N>`` plus a ``-seeds`` summary run.
The table gives each side's median [min, max] and the median of the per-seed differences (paired:
same seed, same split); it is printed and written to ``{output_dir}/comparison.json``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from bertscale.atomic import atomic_write_text
from bertscale.config import load_config, split_cli
from bertscale.errors import ConfigError, run_cli
from bertscale.finetune.config import FinetuneConfig
from bertscale.finetune.seeds import aggregate, run_seeds

INITS = ("pretrained", "random")


def compare(cfg: FinetuneConfig) -> dict[str, dict[int, dict[str, float]]]:
    """Per init, per seed: the final held-out metrics."""
    if cfg.model.checkpoint is None:
        raise ConfigError("model.checkpoint is required: it is the pretrained side of the comparison")
    root = cfg.output_path
    uri = cfg.mlflow.tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    results = {}
    for init in INITS:
        run_cfg = dataclasses.replace(
            cfg,
            seeds=cfg.seeds or [cfg.seed],
            model=dataclasses.replace(cfg.model, init=init),
            mlflow=dataclasses.replace(
                cfg.mlflow, tracking_uri=uri, run_name=f"{cfg.mlflow.run_name or cfg.task}-{init}"
            ),
            output_dir=str(root / init),
        )
        results[init], _ = run_seeds(run_cfg)
    return results


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    pre, rnd = results["pretrained"], results["random"]
    seeds = sorted(set(pre) & set(rnd))
    a, b = aggregate([pre[s] for s in seeds]), aggregate([rnd[s] for s in seeds])
    names = sorted(set(a) & set(b))
    lines = [
        f"over {len(seeds)} seed(s) {seeds}: median [min, max]; difference = median of per-seed differences",
        f"{'metric':<22}{'pretrained':>26}{'random init':>26}{'difference':>12}",
    ]
    for name in names:
        diff = statistics.median(pre[s][name] - rnd[s][name] for s in seeds)
        cells = [f"{x['median']:.4f} [{x['min']:.4f}, {x['max']:.4f}]" for x in (a[name], b[name])]
        lines.append(f"{name:<22}{cells[0]:>26}{cells[1]:>26}{diff:>+12.4f}")
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
