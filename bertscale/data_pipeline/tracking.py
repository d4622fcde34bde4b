"""The pipeline's own MLflow run (``mlflow.enabled=true``): counts, skipped inputs, timings, manifest.

Public API:
    track_pipeline(cfg, output, timings, wall_s) -> None     after a finished run_pipeline(cfg)

The run records the shards it wrote as an MLflow dataset with the same digest (the manifest's hash)
that every pretraining run on them logs as its input, so the UI's dataset search finds both; the
manifest itself is an artifact. Tracking failures only warn (bertscale.runtime.tracking).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bertscale.config import to_dict
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.data_pipeline.schema import MANIFEST_NAME, load_manifest


def track_pipeline(cfg: PipelineConfig, output: Path, timings: dict[str, float], wall_s: float) -> None:
    if not cfg.mlflow.enabled:
        return
    from bertscale.runtime.lineage import manifest_dataset  # mlflow and torch: only when tracking is on
    from bertscale.runtime.tracking import Tracker

    manifest = load_manifest(output)
    inputs = manifest.inputs
    skipped = "; ".join(f"{s['path']}: {s['reason']}" for s in manifest.skipped)
    splits = ", ".join(
        f"{name} {s.samples:,} samples in {len(s.shards)} shards" for name, s in manifest.splits.items()
    )
    description = (
        f"**Data pipeline** (Ray, {cfg.num_workers} workers): {inputs.get('documents', 0):,} documents, "
        f"{inputs.get('tokens', 0):,} tokens → `{output.resolve()}` ({splits}; vocab {manifest.vocab_size}, "
        f"sequences of {manifest.max_seq_length}, dupe factor {manifest.dupe_factor}).\n\n"
        f"Skipped inputs: {skipped or 'none'}."
    )
    # beside the shards, not in them: the dataset directory holds only what the pipeline wrote
    record = output.parent / f"{output.name}-pipeline-run"
    # logged after the work is done: sampling system metrics now would describe nothing
    mlflow_cfg = dataclasses.replace(cfg.mlflow, system_metrics=False)
    tracker = Tracker(
        mlflow_cfg, to_dict(cfg), output_dir=record, description=description, job="data_pipeline"
    )
    metrics: dict[str, float] = {k: float(v) for k, v in inputs.items() if isinstance(v, int | float)}
    for name, split in manifest.splits.items():
        metrics |= {
            f"{name}_samples": split.samples,
            f"{name}_tokens": split.tokens,
            f"{name}_shards": len(split.shards),
        }
    metrics |= {f"dropped_{name}_samples": n for name, n in manifest.dropped_samples.items()}
    metrics |= {f"time_{stage}_s": seconds for stage, seconds in timings.items()}
    metrics |= {"skipped_inputs": len(manifest.skipped), "time_total_s": wall_s}
    metrics["tokens_per_s"] = inputs.get("tokens", 0) / wall_s if wall_s > 0 else 0.0
    tracker.log_metrics(0, metrics)
    if skipped:
        tracker.set_tags({"bertscale.skipped_inputs": skipped[:5000]})
    tracker.log_dataset(lambda: manifest_dataset(output), context="output")
    tracker.log_artifact(output / MANIFEST_NAME)
    tracker.close()
