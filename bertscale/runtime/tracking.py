"""Run tracking: MLflow (rank 0 only) + console + ``metrics.jsonl``; throughput and MFU.

Public API:
    Tracker(mlflow_cfg, run_params, *, output_dir, enabled=True)
        .log_params(dict) .log_metrics(step, dict) .log_artifact(path) .close(status="FINISHED")
    peak_flops_per_device(configured_tflops) -> float | None

Every MLflow call is guarded: the first failure (server down, bad URI) logs one warning and turns
MLflow off for the rest of the run; training never stops because of tracking. The console line
and ``{output_dir}/metrics.jsonl`` (one JSON object per logged step) are always written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bertscale.runtime.config import MlflowConfig
from bertscale.secrets import redact, tracking_credentials_to_env

log = logging.getLogger("bertscale")

# Dense bf16 peak of one device, TFLOP/s (vendor datasheets), matched against the CUDA device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


def peak_flops_per_device(configured_tflops: float | None) -> float | None:
    if configured_tflops:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None  # unknown peak (e.g. CPU): MFU is not reported rather than invented


class Tracker:
    def __init__(
        self,
        mlflow_cfg: MlflowConfig,
        run_params: Mapping[str, Any] | None = None,
        *,
        output_dir: str | Path,
        enabled: bool = True,
    ):
        self.enabled = enabled  # False on ranks other than 0: every method is a no-op
        self.output_dir = Path(output_dir)
        self.client = None
        self.run_id: str | None = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if mlflow_cfg.enabled:
            self._guard(self._start, mlflow_cfg)
        if run_params:
            self.log_params(run_params)

    def _start(self, cfg: MlflowConfig) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, not after minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        uri = cfg.tracking_uri or f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"
        uri = tracking_credentials_to_env(uri)  # MLflow reads them from there; never in a URI it prints
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # artifacts beside the run, not in ./mlruns of whatever directory we started in
            location = (
                (self.output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None
            )
            experiment_id = client.create_experiment(cfg.experiment, artifact_location=location)
        run = client.create_run(experiment_id, run_name=cfg.run_name)
        self.client, self.run_id = client, run.info.run_id
        log.info("MLflow run %s in experiment '%s' at %s", self.run_id, cfg.experiment, redact(uri))

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as err:  # tracking must never kill training
            log.warning("MLflow tracking disabled for this run: %s: %s", type(err).__name__, redact(str(err)))
            self.client = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:6000]) for k, v in _flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._guard(lambda chunk: self.client.log_batch(self.run_id, params=chunk), items[i : i + 100])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        log.info("step %d  %s", step, "  ".join(f"{k} {v:.6g}" for k, v in values.items()))
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.client is not None:
            self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def close(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.client is not None:
            self._guard(lambda: self.client.set_terminated(self.run_id, status))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
