"""The runs of an MLflow tracking store side by side: the demo's closing table.

python -m bertscale.infra.mlflow_summary --tracking-uri sqlite:///.demo/mlflow.db

Pretraining runs: tokens seen, eval MLM/NSP accuracy, tokens/s (median over the run's logging
windows), MFU, the data they read (the dataset digest = the manifest's hash) and the code (git
commit). Fine-tuning runs: held-out accuracy/F1 and the checkpoint they started from (the pretraining
run and step of the logged model, or the path). Data pipeline runs: documents, tokens, samples,
skipped inputs. Runs bertscale did not tag (older runs) are listed with their headline metrics.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from bertscale.errors import BertscaleError, run_cli
from bertscale.runtime.tracking import JOB_TAG

Row = dict[str, Any]

COLUMNS = {
    "pretrain": ["run", "status", "step", "tokens_seen", "eval_mlm_accuracy", "eval_nsp_accuracy",
                 "tokens_per_s", "mfu", "data", "commit"],
    "finetune": ["run", "status", "step", "eval_accuracy", "test_accuracy", "test_f1", "source"],
    "data_pipeline": ["run", "status", "documents", "tokens", "train_samples", "validation_samples",
                      "skipped_inputs", "time_total_s", "data"],
    "other": ["run", "status", "loss", "eval_accuracy", "test_accuracy", "test_f1"],
}  # fmt: skip
TITLES = {
    "pretrain": "Pretraining",
    "finetune": "Fine-tuning",
    "data_pipeline": "Data pipeline",
    "other": "Other",
}


def summarize(tracking_uri: str) -> dict[str, list[Row]]:
    """Runs grouped by job (``bertscale.job`` tag), oldest first, one dict of display values each."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    groups: dict[str, list[Row]] = {job: [] for job in COLUMNS}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
            job = run.data.tags.get(JOB_TAG, "other")
            groups.get(job, groups["other"]).append(_row(client, run, job))
    return {job: rows for job, rows in groups.items() if rows}


def _row(client: Any, run: Any, job: str) -> Row:
    metrics, tags = run.data.metrics, run.data.tags
    row: Row = {"run": run.info.run_name, "status": run.info.status, **metrics}
    row["step"] = _last_step(client, run.info.run_id, "loss")
    if "tokens_per_s" in metrics:  # the last window is often partial: the median is the run's rate
        history = client.get_metric_history(run.info.run_id, "tokens_per_s")
        row["tokens_per_s"] = statistics.median(m.value for m in history)
    if "mfu" in metrics:
        row["mfu"] = statistics.median(m.value for m in client.get_metric_history(run.info.run_id, "mfu"))
    datasets = run.inputs.dataset_inputs if run.inputs else []
    if datasets:
        row["data"] = ", ".join(f"{d.dataset.name}@{d.dataset.digest[:12]}" for d in datasets)
    commit = tags.get("mlflow.source.git.commit")
    if commit:
        row["commit"] = commit[:10] + ("+dirty" if tags.get("bertscale.git.dirty") == "true" else "")
    if job == "finetune":
        row["source"] = _source(client, tags)
    return row


def _last_step(client: Any, run_id: str, key: str) -> int | None:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=None)


def _source(client: Any, tags: dict[str, str]) -> str:
    """'<pretraining run> step N (<model id>)' when the checkpoint was a logged model, else its path."""
    model_id = tags.get("bertscale.source_model_id")
    if model_id:
        try:
            model = client.get_logged_model(model_id)
            run = client.get_run(model.source_run_id)
            return f"{run.info.run_name} step {model.tags.get('bertscale.step', '?')} ({model_id})"
        except Exception:
            return model_id
    return tags.get("bertscale.source_path", "-")


def format_table(rows: list[Row], columns: list[str]) -> str:
    present = [c for c in columns if c in ("run", "status") or any(r.get(c) is not None for r in rows)]
    cells = [[_cell(r.get(c)) for c in present] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(present)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(present, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1:
            return f"{int(value):,}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bertscale.infra.mlflow_summary", description=__doc__)
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args(argv)
    groups = summarize(args.tracking_uri)
    if not groups:
        raise BertscaleError(f"{args.tracking_uri}: no runs recorded")
    for job, rows in groups.items():
        print(f"\n{TITLES[job]} runs")
        print(format_table(rows, COLUMNS[job]))


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
