"""Run tracking: MLflow (rank 0 only) + console + ``metrics.jsonl``; throughput and MFU.

Public API:
    Tracker(mlflow_cfg, run_params, *, output_dir, enabled=True, description="", job="", world_size=1, hosts=())
        .log_params(dict) .log_metrics(step, dict) .log_artifact(path) .close(status="FINISHED")
        .set_tags(dict) .set_description(markdown)
        .log_dataset(make_dataset, context)       an mlflow.data dataset as a run input
        .log_model(directory, name=, step=) -> model_id | None   a logged model pointing at a directory
        .start_from(directory) -> LoggedModel | None   the logged model at directory becomes a run input
        .register(model_id, files, name)          upload files into the logged model, register it
        .run_url -> str | None
    job_tracker(mlflow_cfg, dist, *, output_dir, job, description) -> Tracker   every rank calls it (a
        collective): gathers the hosts, tracks on rank 0; ``.hosts`` lists each rank's host
    find_logged_model(tracking_uri, directory) -> LoggedModel | None
    node_monitor(mlflow_cfg, run_id) -> monitor | None   system metrics of another node into the run
    peak_flops_per_device(configured_tflops) -> float | None

The run carries its lineage from the start (bertscale.runtime.lineage: git commit and dirty flag,
command line, versions, world size, hosts, a description); experiments it creates are marked as
model-training experiments (``mlflow.experimentKind``), so the UI opens them in its training view.
A logged model (MLflow 3 LoggedModel) records a checkpoint *where it is* (tag ``bertscale.path``),
linked to the run, the step and the eval metrics logged last; nothing is copied into the artifact
store unless registered. System metrics (CPU, memory, GPU when pynvml is present) are sampled by
MLflow's SystemMetricsMonitor into ``system/*`` metrics of the run, per node (``node_id``).

Every MLflow call is guarded: the first failure (server down, bad URI) logs one warning and turns
MLflow off for the rest of the run; training never stops because of tracking. The console line
and ``{output_dir}/metrics.jsonl`` (one JSON object per logged step) are always written.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bertscale.runtime.config import MlflowConfig
from bertscale.secrets import redact, tracking_credentials_to_env

if TYPE_CHECKING:  # engine imports DeepSpeed: not at import time of every tracked job
    from bertscale.runtime.engine import DistInfo

log = logging.getLogger("bertscale")

# Dense bf16 peak of one device, TFLOP/s (vendor datasheets), matched against the CUDA device name.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI's training view
JOB_TAG = (
    "bertscale.job"  # pretrain | finetune | data_pipeline: what bertscale.infra.mlflow_summary groups by
)
RUN_NOTE = "mlflow.note.content"  # the run page's description (Markdown)
PATH_TAG = "bertscale.path"  # where a logged model's files are (they are not copied)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


def peak_flops_per_device(configured_tflops: float | None) -> float | None:
    if configured_tflops:
        return configured_tflops * 1e12
    import torch  # here, not at the top: the summary CLI and the pipeline import this module

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
        description: str = "",
        job: str = "",
        world_size: int = 1,
        hosts: Iterable[str] = (),
    ):
        self.enabled = enabled  # False on ranks other than 0: every method is a no-op
        self.output_dir = Path(output_dir)
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.tracking_uri: str | None = None
        self.monitor = None
        self.cfg = mlflow_cfg
        self.hosts = list(hosts)
        self._eval: tuple[int, dict[str, float]] | None = None  # the last held-out metrics, their step
        self._models: dict[str, Path] = {}  # logged model id -> the directory it points at
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (self.output_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if mlflow_cfg.enabled:
            self._guard(self._start, mlflow_cfg, description, job, world_size, self.hosts)
        if run_params:
            self.log_params(run_params)

    def _start(
        self, cfg: MlflowConfig, description: str, job: str, world_size: int, hosts: list[str]
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, not after minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        import mlflow
        from mlflow.tracking import MlflowClient

        from bertscale.runtime.lineage import run_tags

        uri = cfg.tracking_uri or f"sqlite:///{(self.output_dir / 'mlflow.db').resolve()}"
        uri = tracking_credentials_to_env(uri)  # MLflow reads them from there; never in a URI it prints
        mlflow.set_tracking_uri(uri)  # MLflow's model and registry helpers use the process-wide URI
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # artifacts beside the run, not in ./mlruns of whatever directory we started in
            location = (
                (self.output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite") else None
            )
            experiment_id = client.create_experiment(
                cfg.experiment, artifact_location=location, tags=dict([EXPERIMENT_KIND])
            )
        tags = run_tags(description, world_size=world_size, hosts=hosts) | ({JOB_TAG: job} if job else {})
        run = client.create_run(experiment_id, run_name=cfg.run_name, tags=tags)
        self.client, self.run_id, self.experiment_id = client, run.info.run_id, experiment_id
        self.tracking_uri = uri
        log.info("MLflow run %s in experiment '%s' at %s", self.run_id, cfg.experiment, redact(uri))
        if _system_metrics_on(cfg.system_metrics):
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=cfg.system_metrics_interval_s,
                node_id=socket.gethostname(),
                tracking_uri=uri,
            )
            self.monitor.start()

    def _guard(self, fn, *args) -> Any:
        if self.client is None and fn.__name__ != "_start":
            return None
        try:
            return fn(*args)
        except Exception as err:  # tracking must never kill training
            log.warning("MLflow tracking disabled for this run: %s: %s", type(err).__name__, redact(str(err)))
            self._stop_monitor()
            self.client = None
            return None

    @property
    def run_url(self) -> str | None:
        """The run page's path in the MLflow UI (relative to the UI's address)."""
        if self.client is None:
            return None
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Param

        items = [Param(k, redact(str(v))[:6000]) for k, v in _flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._guard(lambda chunk: self.client.log_batch(self.run_id, params=chunk), items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        self._guard(lambda: self.client.log_batch(self.run_id, tags=batch))

    def set_description(self, text: str) -> None:
        self.set_tags({RUN_NOTE: text})

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        log.info("step %d  %s", step, "  ".join(f"{k} {v:.6g}" for k, v in values.items()))
        held_out = {k: v for k, v in values.items() if k.startswith(("eval_", "test_"))}
        if held_out:  # eval_* and test_* of one step may come in separate calls
            same_step = self._eval is not None and self._eval[0] == step
            self._eval = (step, {**self._eval[1], **held_out} if same_step else held_out)
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        self._guard(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    @property
    def active(self) -> bool:
        """True while runs go to MLflow (rank 0, enabled, no tracking failure yet)."""
        return self.client is not None

    def log_dataset(self, make_dataset: Callable[[], Any], context: str = "training") -> None:
        """``make_dataset()`` → an ``mlflow.data`` Dataset (bertscale.runtime.lineage builds them);
        called only when tracking is active, and its failure is a tracking failure like any other."""

        def log_input() -> None:
            from mlflow.entities import DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            dataset = make_dataset()
            entry = DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
            self.client.log_inputs(self.run_id, datasets=[entry])

        self._guard(log_input)

    def log_model(
        self,
        directory: str | Path,
        *,
        name: str,
        step: int,
        params: Mapping[str, Any] | None = None,
        model_type: str = "bert",
    ) -> str | None:
        """Record ``directory`` as a logged model of this run at ``step``; → its model id.

        The model's metrics are the eval metrics logged last (at or before ``step``); its files stay
        where they are (``bertscale.path``). Logged models whose directory has since been deleted
        (pruned checkpoints) are tagged ``bertscale.deleted=true``.
        """

        def create() -> str:
            import mlflow
            from mlflow.entities import LoggedModelOutput, Metric

            path = Path(directory).resolve()
            model = mlflow.create_external_model(
                name=name,
                source_run_id=self.run_id,
                tags={PATH_TAG: str(path), "bertscale.step": str(step)},
                params={k: str(v) for k, v in (params or {}).items()},
                model_type=model_type,
                experiment_id=self.experiment_id,
            )
            if self._eval is not None and self._eval[0] <= step:
                eval_step, values = self._eval
                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, eval_step, model_id=model.model_id) for k, v in values.items()]
                self.client.log_batch(self.run_id, metrics=metrics)
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
            self._models[model.model_id] = path
            self._mark_deleted()
            return model.model_id

        return self._guard(create)

    def _mark_deleted(self) -> None:
        for model_id, path in list(self._models.items()):
            if not path.exists():
                self.client.set_logged_model_tags(model_id, {"bertscale.deleted": "true"})
                del self._models[model_id]

    def start_from(self, directory: str | Path) -> Any:
        """This run starts from the model files at ``directory``: if a run of this tracking store logged
        them, that logged model becomes an input of this run and its ids are tagged
        (``bertscale.source_model_id``, ``bertscale.source_run_id``). → the LoggedModel or None."""

        def link() -> Any:
            from mlflow.entities import LoggedModelInput

            model = find_logged_model(self.tracking_uri, directory)
            tags = {"bertscale.source_path": str(Path(directory).resolve())}
            if model is not None:
                self.client.log_inputs(self.run_id, models=[LoggedModelInput(model.model_id)])
                tags |= {
                    "bertscale.source_model_id": model.model_id,
                    "bertscale.source_run_id": model.source_run_id,
                }
            self.set_tags(tags)
            return model

        return self._guard(link)

    def register(self, model_id: str, files: str | Path, name: str) -> int | None:
        """Upload ``files`` (a directory) into logged model ``model_id`` and register it as ``name``."""

        def upload_and_register() -> int:
            import mlflow

            self.client.log_model_artifacts(model_id, str(files))
            version = mlflow.register_model(f"models:/{model_id}", name, await_registration_for=0)
            log.info("registered model '%s' version %s", name, version.version)
            return int(version.version)

        return self._guard(upload_and_register)

    def close(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        self._stop_monitor()
        if self.client is not None:
            self._guard(self._mark_deleted)
            self._guard(lambda: self.client.set_terminated(self.run_id, status))

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            try:
                monitor.finish()
            except Exception as err:
                log.warning("MLflow system metrics: %s", err)


def job_tracker(
    mlflow_cfg: MlflowConfig, dist: DistInfo, *, output_dir: str | Path, job: str, description: str
) -> Tracker:
    """The tracker of a distributed job's run: every rank calls it (it gathers each rank's host name
    for the run's lineage); rank 0 tracks, the others get a no-op Tracker."""
    from bertscale.runtime.engine import all_gather_object

    return Tracker(
        mlflow_cfg,
        None,
        output_dir=output_dir,
        enabled=dist.rank == 0,
        description=description,
        job=job,
        world_size=dist.world_size,
        hosts=all_gather_object(socket.gethostname()),
    )


def find_logged_model(tracking_uri: str, directory: str | Path) -> Any:
    """The newest logged model recorded at ``directory`` in the store at ``tracking_uri``, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    path = str(Path(directory).resolve()).replace("'", "\\'")
    found = client.search_logged_models(
        experiments,
        filter_string=f"tags.`{PATH_TAG}` = '{path}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
    )
    return found[0] if found else None


def node_monitor(cfg: MlflowConfig, run_id: str | None) -> Any:
    """System metrics of this node into rank 0's run (the first rank of every other node calls it).

    Only with an explicit ``tracking_uri`` (a server or shared store): the default SQLite file lives
    on rank 0's node. → a monitor to ``finish()``, or None.
    """
    if not (cfg.enabled and cfg.tracking_uri and run_id and _system_metrics_on(cfg.system_metrics)):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=cfg.system_metrics_interval_s, node_id=socket.gethostname(),
            tracking_uri=tracking_credentials_to_env(cfg.tracking_uri),
        )  # fmt: skip
        monitor.start()
        return monitor
    except Exception as err:
        log.warning("MLflow system metrics of %s disabled: %s", socket.gethostname(), redact(str(err)))
        return None


def _system_metrics_on(setting: bool | None) -> bool:
    """None (the default): on where there is a GPU, off on CPU, where sampling costs throughput."""
    import torch

    return torch.cuda.is_available() if setting is None else setting


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
