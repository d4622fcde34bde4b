"""Print every run in an MLflow tracking store with its latest metrics: the demo's closing table.

python -m bertscale.infra.mlflow_summary --tracking-uri sqlite:///.demo/mlflow.db
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bertscale.errors import BertscaleError, run_cli


def _headline(name: str) -> bool:
    """The metrics worth a line in the terminal; everything else is in the UI."""
    held_out = name.startswith(("eval_", "test_")) and name.endswith(("accuracy", "f1"))
    return name == "loss" or held_out


def summarize(tracking_uri: str) -> list[dict[str, object]]:
    """One row per run: experiment, run name, status and its latest headline metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    rows: list[dict[str, object]] = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
            metrics = run.data.metrics
            rows.append(
                {
                    "experiment": experiment.name,
                    "run": run.info.run_name,
                    "status": run.info.status,
                    **{k: v for k, v in sorted(metrics.items()) if _headline(k)},
                }
            )
    return rows


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bertscale.infra.mlflow_summary", description=__doc__)
    parser.add_argument("--tracking-uri", required=True)
    args = parser.parse_args(argv)
    rows = summarize(args.tracking_uri)
    if not rows:
        raise BertscaleError(f"{args.tracking_uri}: no runs recorded")
    for row in rows:
        head = f"{row.pop('experiment')} / {row.pop('run')} [{row.pop('status')}]"
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))
        print(f"{head}: {metrics}")


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
