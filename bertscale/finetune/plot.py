"""The fine-tuning curves (train/eval loss and the eval metric per step) as a PNG, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from bertscale.atomic import atomic_write


def read_curves(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """name → [(step, value)] for every metric logged (one JSON object per logged step)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            for name, value in row.items():
                if name != "step":
                    curves.setdefault(name, []).append((int(row["step"]), float(value)))
    return curves


def plot_curves(curves: dict[str, list[tuple[int, float]]], eval_metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        if curves.get(name):
            steps, values = zip(*curves[name], strict=True)
            ax_loss.plot(steps, values, marker="." if name == "eval_loss" else None, label=label)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_loss.legend()
    if curves.get(f"eval_{eval_metric}"):
        steps, values = zip(*curves[f"eval_{eval_metric}"], strict=True)
        ax_metric.plot(steps, values, marker=".", color="tab:green")
    ax_metric.set(xlabel="step", ylabel=eval_metric, title=f"validation {eval_metric}")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
