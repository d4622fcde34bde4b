"""Several fine-tuning seeds, one summary: median and spread of every final metric.

Public API:
    aggregate(results) -> {metric: {"median", "min", "max", "spread", "mean", "std", "n"}}
    summary_table(aggregated) -> str
    run_seeds(cfg) -> (per-seed results, aggregated)

One seed's held-out accuracy on a few hundred examples moves by several points from seed to seed
(data split, head init, batch order and dropout all follow ``seed``), so a single run cannot tell
two set-ups apart; the median over seeds with its min..max range can. Each seed runs into
``{output_dir}/seed_{n}`` as its own tracked run (``{run_name}-seed{n}``); the summary is written
to ``{output_dir}/seeds.json`` and logged as one more run, ``{run_name}-seeds``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence

from bertscale.atomic import atomic_write_text
from bertscale.errors import ConfigError
from bertscale.finetune.config import FinetuneConfig
from bertscale.runtime.tracking import Tracker

Aggregated = dict[str, dict[str, float]]


def aggregate(results: Sequence[Mapping[str, float]]) -> Aggregated:
    """Per metric present in every result: median, min, max, spread (max - min), mean, sample std."""
    if not results:
        raise ValueError("aggregate() needs at least one result")
    names = sorted(set.intersection(*(set(r) for r in results)))
    out: Aggregated = {}
    for name in names:
        values = [float(r[name]) for r in results]
        out[name] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "spread": max(values) - min(values),
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": float(len(values)),
        }
    return out


def summary_table(aggregated: Aggregated) -> str:
    lines = [f"{'metric':<22}{'median':>9}{'min':>9}{'max':>9}{'std':>9}{'n':>4}"]
    for name, s in aggregated.items():
        lines.append(
            f"{name:<22}{s['median']:>9.4f}{s['min']:>9.4f}{s['max']:>9.4f}{s['std']:>9.4f}{int(s['n']):>4}"
        )
    return "\n".join(lines)


def run_seeds(cfg: FinetuneConfig) -> tuple[dict[int, dict[str, float]], Aggregated]:
    """Fine-tune once per ``cfg.seeds`` entry (same config otherwise) and aggregate the final metrics."""
    from bertscale.finetune.train import main as finetune  # the job; this module only repeats it

    if not cfg.seeds:
        raise ConfigError("seeds: give at least one seed, e.g. seeds=[1,2,3]")
    root = cfg.output_path
    name = cfg.mlflow.run_name or cfg.task
    uri = cfg.mlflow.tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"  # one store for all
    mlflow = dataclasses.replace(cfg.mlflow, tracking_uri=uri)
    results: dict[int, dict[str, float]] = {}
    for seed in cfg.seeds:
        run_cfg = dataclasses.replace(
            cfg,
            seeds=[],
            seed=seed,
            mlflow=dataclasses.replace(mlflow, run_name=f"{name}-seed{seed}"),
            output_dir=str(root / f"seed_{seed}"),
        )
        results[seed] = finetune(run_cfg)
    aggregated = aggregate(list(results.values()))
    if _rank() == 0:
        summary = {"seeds": cfg.seeds, "results": results, "aggregated": aggregated}
        atomic_write_text(root / "seeds.json", json.dumps(summary, indent=2) + "\n")
        tracker = Tracker(dataclasses.replace(mlflow, run_name=f"{name}-seeds"), None, output_dir=root)
        tracker.log_params({"seeds": ",".join(map(str, cfg.seeds)), "task": cfg.task})
        tracker.log_metrics(
            0,
            {
                f"{m}_{k}": v
                for m, s in aggregated.items()
                for k, v in s.items()
                if k in ("median", "spread", "std")
            },
        )
        tracker.log_artifact(root / "seeds.json")
        tracker.close()
    return results, aggregated


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0
