"""What MLflow's system-metrics sampling costs a CPU training run (decides the CPU default).

A tiny BertForPreTraining trains (forward + backward + AdamW, the demo's model size) in windows
that alternate sampling on and off (interleaved, so load from other processes hits both alike),
with the real bertscale Tracker writing to a SQLite store. Reported per condition: median steps
per process CPU second (robust to time-sharing) and steps per wall second, and — exact, whatever
the load — the CPU seconds the sampling thread itself used, as a fraction of the run's.

    python benchmarks/system_metrics.py                     # 4 rounds of 2 x 15 s, interval 10 s
    python benchmarks/system_metrics.py --interval 1 --window 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from bertscale.model import BertConfig, BertForPreTraining
from bertscale.runtime.config import MlflowConfig
from bertscale.runtime.tracking import Tracker


def _batch(config: BertConfig, batch: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    labels = torch.full_like(input_ids, -100)
    labels[:, 1::7] = input_ids[:, 1::7]
    return {
        "input_ids": input_ids,
        "token_type_ids": torch.zeros_like(input_ids),
        "attention_mask": torch.ones_like(input_ids),
        "labels": labels,
        "next_sentence_label": torch.zeros(batch, dtype=torch.long),
    }


def _window(model, optimizer, batch, seconds: float) -> tuple[int, float, float]:
    """→ (steps, wall s, process CPU s) of training for ``seconds``."""
    cpu0, wall0, steps = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - wall0 < seconds:
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
        steps += 1
    return steps, time.perf_counter() - wall0, time.process_time() - cpu0


def _monitor_cpu_s() -> float:
    ids = {t.native_id for t in threading.enumerate() if t.name == "SystemMetricsMonitor"}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=15.0, help="seconds per condition per round")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="sampling interval, s (MLflow's default)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one rank's share of a 2-core machine; no spinning pool threads
    config = BertConfig(vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=128)  # fmt: skip
    model = BertForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _batch(config, 8, 128)
    _window(model, optimizer, batch, 3.0)  # warm-up
    results: dict[bool, list[tuple[int, float, float]]] = {False: [], True: []}
    monitor_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for on in (False, True):
                cfg = MlflowConfig(
                    tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}", experiment="system-metrics-cost",
                    system_metrics=on, system_metrics_interval_s=args.interval,
                )  # fmt: skip
                tracker = Tracker(cfg, None, output_dir=tmp)
                results[on].append(_window(model, optimizer, batch, args.window))
                if on:
                    monitor_cpu += _monitor_cpu_s()
                tracker.close()
    for on, rows in results.items():
        per_cpu = statistics.median(s / c for s, _, c in rows)
        per_wall = statistics.median(s / w for s, w, _ in rows)
        print(f"system metrics {'on ' if on else 'off'}: {per_cpu:.3f} steps/CPU-s  {per_wall:.3f} steps/s")
    off = statistics.median(s / c for s, _, c in results[False])
    on = statistics.median(s / c for s, _, c in results[True])
    run_cpu = sum(c for _, _, c in results[True])
    print(f"on/off steps per CPU second: {on / off:.3f}")
    print(f"sampling thread: {monitor_cpu:.3f} CPU s of {run_cpu:.1f} ({100 * monitor_cpu / run_cpu:.2f}%)")


if __name__ == "__main__":
    main()
