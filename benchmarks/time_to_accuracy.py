"""Time to accuracy from scratch: our pretraining vs ``transformers.Trainer``, same shards, same CPU budget.

    nice -n 10 python benchmarks/time_to_accuracy.py [--budget-cpu-s 600] [--points 8]
        [--shards .demo/shards] [--config bertscale/pretrain/configs/tiny.yaml] [--out runs/bench_tta]
        [--device cpu|cuda] [--seeds 1 2 3] [key=value ...]   # key=value: our pretraining config, both sides

Ours is the real job (``deepspeed --num_accelerators N --module bertscale.pretrain``, N=2 CPU ranks
over gloo); the baseline is ``transformers.Trainer`` + ``BertForPreTraining`` + its own
``DataCollatorForLanguageModeling`` on the same unmasked pairs of the same shards, N processes under
``torchrun`` (benchmarks/tta_transformers.py). Both take every hyperparameter from one resolved
config (tiny.yaml + overrides): model shape, dropout, batch, AdamW lr / betas / eps / weight decay,
warmup and decay to 0 at ``max_steps``, clipping, seed. One thread per process (OMP_NUM_THREADS=1).
Ours runs ZeRO-0 here, the baseline's DDP algorithm (a replicated optimizer); ``engine.zero_stage=1``
measures the partitioned one.

The clock is CPU seconds summed over each side's whole process tree from launch (imports, start-up,
data loading, checkpoint saves all count; the load of other processes does not); on ``--device
cuda`` it is wall seconds x GPUs. Each side saves a checkpoint every ``--save-every`` steps and
is stopped (SIGUSR1: checkpoint, exit) when its budget is spent. Afterwards one evaluator (our
``evaluate`` of bertscale.pretrain on our model class, which matches transformers' BertForPreTraining
elementwise) scores the checkpoints nearest to ``--points`` evenly spaced clock values on the whole
validation split (the pipeline's static masks), for both sides. Headline: the clock ours needs to
reach the MLM accuracy the baseline has at the end of its budget, and the ratio; both curves go to
``{out}/time_to_accuracy.png``, the figures to ``{out}/results.json``. With ``--seeds`` the race runs
once per seed (both sides take it) into ``{out}/seed_N/``, and ``{out}/results.json`` adds the median
ratio and its spread: one race cannot tell a ratio from the seed-to-seed noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from bertscale.atomic import atomic_write_text, prepare_output_dir
from bertscale.config import save_config
from bertscale.data_pipeline.schema import load_manifest
from bertscale.errors import ConfigError, DataError, run_cli
from bertscale.finetune.seeds import aggregate
from bertscale.masking import IGNORE_INDEX
from bertscale.model import BertConfig, BertForPreTraining, training_flops_per_token
from bertscale.model_dir import STEP_DIR, load_pretrained
from bertscale.ports import free_port
from bertscale.pretrain.config import PretrainConfig, load_pretrain_config
from bertscale.pretrain.data import eval_batches
from bertscale.pretrain.train import evaluate, majority_baselines

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules
from cpu_budget import BudgetRun, run_under_budget
from train import check_device, datasheet_peak, matmul_flops

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MIN_MASKED_TOKENS = 200  # below this one accuracy point is > 0.5%: the curves would be noise
HF_CHECKPOINT = "checkpoint-"


@dataclass
class Point:
    step: int
    clock_s: float
    path: str
    mlm_accuracy: float | None = None
    nsp_accuracy: float | None = None
    mlm_loss: float | None = None


# --- checks (one line each, before any work) ---------------------------------------------------


def count_masked(batches: list[dict[str, torch.Tensor]]) -> int:
    return sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)


def check_eval_split(masked: int, sequences: int, shards: Path, split: str) -> None:
    if masked < MIN_MASKED_TOKENS:
        raise DataError(
            f"{shards}: the {split!r} split has {masked} masked tokens in {sequences} pairs; at least "
            f"{MIN_MASKED_TOKENS} are needed to measure MLM accuracy (build the shards with a larger validation split)"
        )


def warmup_floor_s(warmup_steps: int, flops_per_step: float, peak_flops: float) -> float:
    """The least clock the warmup can take: its model FLOPs at the machine's matmul peak."""
    return warmup_steps * flops_per_step / peak_flops


def check_budget(budget_s: float, warmup_steps: int, floor_s: float, unit: str) -> None:
    if budget_s <= floor_s:
        raise ConfigError(
            f"--budget-cpu-s {budget_s:g} ends before warmup: schedule.warmup_steps={warmup_steps} "
            f"needs at least {floor_s:.1f} {unit} here (its model FLOPs at this machine's matmul peak); "
            "raise the budget or lower schedule.warmup_steps"
        )


def check_reached_warmup(side: str, points: list[Point], warmup_steps: int, budget_s: float) -> None:
    last = max((p.step for p in points), default=0)
    if last < warmup_steps:
        raise ConfigError(
            f"--budget-cpu-s {budget_s:g} ended {side}'s run at step {last}, before the "
            f"{warmup_steps} warmup steps: raise the budget or lower schedule.warmup_steps"
        )


# --- the two runs ------------------------------------------------------------------------------


def ours_command(args: argparse.Namespace, out: Path, config: Path, ranks: int) -> list[str]:
    """The real job on the resolved config both sides read; the overrides here only place the run."""
    fixed = [
        f"output_dir={out}", "checkpoint.resume=never", f"checkpoint.save_every={args.save_every}",
        "checkpoint.keep_last=0", "mlflow.enabled=false",
        "data.eval_split=none",  # evaluation happens afterwards, off the clock
    ]  # fmt: skip
    return [
        str(BIN / "deepspeed"), "--num_accelerators", str(ranks), "--master_port", str(free_port()),
        "--module", "bertscale.pretrain", "--config", str(config), *fixed,
    ]  # fmt: skip


def baseline_command(args: argparse.Namespace, out: Path, config: Path, ranks: int) -> list[str]:
    return [
        str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
        str(REPO / "benchmarks" / "tta_transformers.py"), "--config", str(config),
        "--output-dir", str(out), "--save-every", str(args.save_every), "--device", args.device,
    ]  # fmt: skip


def checkpoints(out: Path, side: str) -> list[tuple[int, Path]]:
    if side == "ours":
        found = [
            (int(m.group(1)), p)
            for p in (out / "checkpoints").glob("step_*")
            if (m := STEP_DIR.match(p.name))
        ]
    else:
        found = [
            (int(p.name.removeprefix(HF_CHECKPOINT)), p) for p in out.glob(f"{HF_CHECKPOINT}*") if p.is_dir()
        ]
    return sorted(found)


def written_at(directory: Path) -> float:
    """When a checkpoint's last file was written."""
    return max(p.stat().st_mtime for p in directory.rglob("*") if p.is_file())


def run_side(
    side: str, cmd: list[str], out: Path, args: argparse.Namespace, ranks: int
) -> tuple[BudgetRun, list[Point]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # N processes on N cores; spinning OpenMP threads would bill CPU time
    log = out.parent / f"{side}.log"
    print(f"[{side}] {' '.join(cmd)}\n[{side}] log: {log}", flush=True)
    run = run_under_budget(
        cmd, env=env, log=log, budget_s=args.budget_cpu_s, cwd=REPO,
        per_wall_s=ranks if args.device == "cuda" else None,
    )  # fmt: skip
    expected = {0, 75} if side == "ours" else {0}  # 75: our job's "checkpointed on a signal"
    if run.returncode not in expected:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise SystemExit(f"{tail}error: {side}'s run exited with {run.returncode} (log: {log})")
    points = [Point(step, run.clock_at(written_at(path)), str(path)) for step, path in checkpoints(out, side)]
    print(
        f"[{side}] {len(points)} checkpoints, last at step {points[-1].step if points else 0}; "
        f"{run.total_cpu_s:.0f} CPU-s in all, {run.wall_s:.0f} s wall", flush=True,
    )  # fmt: skip
    return run, points


# --- evaluation and the headline ---------------------------------------------------------------


class _Evaluated:
    """What bertscale.pretrain.train.evaluate calls on an engine, for a plain model."""

    def __init__(self, model: BertForPreTraining, device: torch.device):
        self.model, self.device = model.to(device), device

    def eval(self) -> None:
        self.model.eval()

    def __call__(self, **batch: torch.Tensor):
        return self.model(**batch)


def score(point: Point, validation: list[dict[str, torch.Tensor]], device: torch.device) -> Point:
    if point.mlm_accuracy is None:
        pretrained = load_pretrained(point.path)
        model = BertForPreTraining(pretrained.config)
        model.load_state_dict(pretrained.state_dict)
        metrics = evaluate(_Evaluated(model, device), validation)
        point.mlm_accuracy, point.nsp_accuracy = metrics["eval_mlm_accuracy"], metrics["eval_nsp_accuracy"]
        point.mlm_loss = metrics["eval_mlm_loss"]
    return point


def nearest(points: list[Point], budget_s: float, n: int) -> list[Point]:
    """The checkpoints nearest to n evenly spaced clock values up to the budget (or up to the side's
    last checkpoint, when max_steps ended it earlier), and the last one."""
    span = min(budget_s, points[-1].clock_s)
    chosen = {min(points, key=lambda p: abs(p.clock_s - span * k / n)).step for k in range(1, n + 1)}
    return [p for p in points if p.step in chosen or p is points[-1]]


def first_reaching(points: list[Point], target: float, validation, device) -> Point | None:
    """Ours' first checkpoint (in step order) at or above ``target`` MLM accuracy: the coarse points
    find the bracket, the checkpoints inside it are scored in order."""
    scored = [p for p in points if p.mlm_accuracy is not None]
    hit = next((p for p in scored if p.mlm_accuracy >= target), None)
    if hit is None:
        return None
    before = max((p.step for p in scored if p.step < hit.step), default=-1)
    for p in points:
        if before < p.step <= hit.step and score(p, validation, device).mlm_accuracy >= target:
            return p
    return hit


def resolution(accuracy: float, n: float) -> float:
    """Two standard errors of an accuracy measured on ``n`` items: differences below it are noise."""
    return 2 * (accuracy * (1 - accuracy) / max(n, 1)) ** 0.5


def mean_sequence(cfg: PretrainConfig) -> tuple[float, int]:
    split = load_manifest(cfg.data.shards).splits[cfg.data.split]
    return split.tokens / split.samples, split.samples


def flops_per_step(bert: BertConfig, cfg: PretrainConfig, ranks: int) -> float:
    mean_tokens, _ = mean_sequence(cfg)
    sequences = cfg.data.micro_batch_size * cfg.engine.gradient_accumulation_steps * ranks
    return (
        sequences * mean_tokens * training_flops_per_token(bert, round(mean_tokens), cfg.data.masked_lm_prob)
    )


def steady_seconds_per_step(points: list[Point]) -> float | None:
    """Least-squares slope of clock over steps (start-up is the intercept)."""
    if len(points) < 2:
        return None
    n = len(points)
    ms, mc = sum(p.step for p in points) / n, sum(p.clock_s for p in points) / n
    var = sum((p.step - ms) ** 2 for p in points)
    return sum((p.step - ms) * (p.clock_s - mc) for p in points) / var if var else None


def machine_peak(device: torch.device) -> tuple[float, str]:
    """Per clock second: one core's fp32 matmul rate (the clock is CPU-s) or one GPU's bf16 peak."""
    if device.type == "cuda":
        datasheet, what = datasheet_peak(device, "bf16", None)
        if datasheet:
            return datasheet, what
        return matmul_flops(device, torch.bfloat16, 8192), "the GPU's measured bf16 matmul rate"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # per CPU-second, like the clock: load from other processes does not lower it
        return matmul_flops(
            device, torch.float32, 1024, clock=time.process_time
        ), "one core's fp32 matmul rate"
    finally:
        torch.set_num_threads(threads)


def plot(curves: dict[str, list[Point]], baselines: dict[str, float], unit: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, base in zip(
        axes,
        ("mlm_accuracy", "nsp_accuracy"),
        ("eval_mlm_baseline_accuracy", "eval_nsp_baseline_accuracy"),
        strict=True,
    ):
        sides = [label.split(" seed ")[0] for label in curves]  # "ours seed 2" -> "ours"
        labelled: set[str] = set()  # one colour and one legend entry per side, however many seeds
        for side, points in zip(sides, curves.values(), strict=True):
            scored = [p for p in points if getattr(p, key) is not None]
            runs = sides.count(side)
            ax.plot(
                [p.clock_s for p in scored], [getattr(p, key) for p in scored], "o-",
                color="C0" if side == "transformers" else "C1", markersize=3 if runs > 1 else 6, alpha=0.8,
                label=None if side in labelled else f"{side} ({runs} seeds)" if runs > 1 else side,
            )  # fmt: skip
            labelled.add(side)
        ax.axhline(baselines[base], color="grey", linestyle="--", label="constant answer")
        ax.set_xlabel(unit)
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Validation accuracy vs training cost (same shards, model, hyperparameters)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def load_line(label: str) -> str:
    one, five, fifteen = os.getloadavg()
    now = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"{label}: load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs, {now}"


# --- main --------------------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--budget-cpu-s", type=float, default=600.0, help="per side (--device cuda: GPU-seconds)"
    )
    parser.add_argument(
        "--points", type=int, default=8, help="evaluations per side, evenly spaced in the budget"
    )
    parser.add_argument("--shards", type=Path, default=REPO / ".demo" / "shards")
    parser.add_argument("--config", type=Path, default=REPO / "bertscale/pretrain/configs/tiny.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_tta")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace this benchmark's earlier output in --out"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--ranks", type=int, default=None, help="processes per side (default: 2 on CPU, all GPUs)"
    )
    parser.add_argument("--save-every", type=int, default=10, help="checkpoint interval, steps (both sides)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="race once per seed (both sides; seed_N/ under --out) and report the median ratio and spread",
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the pretraining config")
    args = parser.parse_args(argv)
    if args.points < 1 or args.save_every < 1 or args.budget_cpu_s <= 0:
        parser.error("--points and --save-every must be >= 1 and --budget-cpu-s > 0")
    if args.seeds and (min(args.seeds) < 0 or len(set(args.seeds)) < len(args.seeds)):
        parser.error("--seeds must be distinct and >= 0")
    return args, args.overrides


def main(argv: Sequence[str]) -> None:
    args, overrides = parse(argv)
    device = check_device(args.device)
    ranks = args.ranks or (torch.cuda.device_count() if device.type == "cuda" else 2)
    unit = "GPU-seconds (wall x GPUs)" if device.type == "cuda" else "CPU-seconds (all processes)"
    # ZeRO-0: ours replicates the optimizer like the baseline's DDP (same algorithm on both sides;
    # ZeRO-1 partitions it to save memory, which a model this size does not need, and pays for it
    # in copies and gloo collectives: benchmarks/README.md); engine.zero_stage=1 overrides it
    defaults = [f"data.shards={args.shards}", "engine.zero_stage=0"]
    defaults += ["engine.precision=bf16"] if device.type == "cuda" else []
    cfg = load_pretrain_config(args.config, [*defaults, *overrides])
    manifest = load_manifest(args.shards)
    bert = cfg.model.resolve(manifest.vocab_size)
    validation = eval_batches(
        args.shards, cfg.data.eval_split, micro_batch_size=64, rank=0, world_size=1, max_batches=1 << 30
    ) if cfg.data.eval_split in manifest.splits else []  # fmt: skip
    sequences = sum(len(b["next_sentence_label"]) for b in validation)
    check_eval_split(count_masked(validation), sequences, args.shards, cfg.data.eval_split)
    peak, peak_name = machine_peak(device)
    per_step = flops_per_step(bert, cfg, ranks)
    check_budget(
        args.budget_cpu_s,
        cfg.schedule.warmup_steps,
        warmup_floor_s(cfg.schedule.warmup_steps, per_step, peak),
        unit,
    )
    out = prepare_output_dir(
        args.out, key="--out", overwrite=args.overwrite, overwrite_hint="--overwrite", inputs=[args.shards]
    )
    seed_runs = [(out / f"seed_{s}", replace(cfg, seed=s)) for s in args.seeds or []]
    runs = seed_runs or [(out, cfg)]
    written = ["ours", "transformers", "ours.log", "transformers.log", *(d.name for d, _ in seed_runs)]
    for entry in written:  # only what we write
        target = out / entry
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

    print(load_line("start"), flush=True)
    print(
        f"budget {args.budget_cpu_s:g} {unit} per side, {ranks} processes each, device {device}; "
        f"model L{bert.num_hidden_layers}/H{bert.hidden_size}/A{bert.num_attention_heads}/I{bert.intermediate_size}, "
        f"vocab {bert.vocab_size}; {cfg.data.micro_batch_size * ranks * cfg.engine.gradient_accumulation_steps} "
        f"sequences per step, lr {cfg.optimizer.lr:g}, warmup {cfg.schedule.warmup_steps}, {cfg.schedule.decay} decay "
        f"to step {cfg.max_steps}, ours at ZeRO-{cfg.engine.zero_stage}; eval: {sequences} pairs, "
        f"{count_masked(validation)} masked tokens; seeds {[c.seed for _, c in runs]}",
        flush=True,
    )
    baselines = majority_baselines(validation, bert.vocab_size, torch.device("cpu"))
    context = Context(args, ranks, unit, device, validation, baselines, per_step, peak, peak_name)
    results = [race(context, run_cfg, run_out) for run_out, run_cfg in runs]
    if args.seeds:
        summarize(results, out)
    print(load_line("end"), flush=True)


@dataclass
class Context:
    """What every seed's race shares: the run's arguments, the evaluator's split and the machine."""

    args: argparse.Namespace
    ranks: int
    unit: str
    device: torch.device
    validation: list[dict[str, torch.Tensor]]
    baselines: dict[str, float]
    per_step: float
    peak: float
    peak_name: str


def race(ctx: Context, cfg: PretrainConfig, out: Path) -> dict:
    """Both sides on one seed, each to the budget; scored, reported and plotted in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    save_config(cfg, config)  # the transformers side reads the same resolved hyperparameters
    args, validation = ctx.args, ctx.validation
    print(f"\n--- seed {cfg.seed} -> {out}", flush=True)
    runs, curves = {}, {}
    for side in ("transformers", "ours"):
        cmd = (
            ours_command(args, out / side, config, ctx.ranks) if side == "ours"
            else baseline_command(args, out / side, config, ctx.ranks)
        )  # fmt: skip
        runs[side], curves[side] = run_side(side, cmd, out / side, args, ctx.ranks)
        check_reached_warmup(side, curves[side], cfg.schedule.warmup_steps, args.budget_cpu_s)
    print(load_line("end of training"), flush=True)
    for points in curves.values():  # scored after both runs: the evaluator never competes with a run
        for p in nearest(points, args.budget_cpu_s, args.points):
            score(p, validation, ctx.device)

    target = curves["transformers"][-1]
    hit = first_reaching(curves["ours"], target.mlm_accuracy, validation, ctx.device)
    ratio = target.clock_s / hit.clock_s if hit else None
    results = report(ctx, cfg.seed, curves, runs, target, hit, ratio, out)
    plot(curves, ctx.baselines, ctx.unit, out / "time_to_accuracy.png")
    print(f"curves: {out / 'time_to_accuracy.png'}; figures: {out / 'results.json'}")
    return results


def summarize(results: list[dict], out: Path) -> None:
    """Across seeds: the median ratio and its spread (a seed that never reaches the target has none)."""
    ratios = [r["ratio"] for r in results]
    per_seed = ", ".join(
        f"seed {r['seed']}: " + ("not reached" if r["ratio"] is None else f"{r['ratio']:.2f}x")
        for r in results
    )
    summary = {"seeds": [r["seed"] for r in results], "ratios": ratios}
    if None not in ratios:
        stats = aggregate([{"ratio": r} for r in ratios])["ratio"]  # the seeds summaries' one median
        summary |= {"median_ratio": stats["median"], "min_ratio": stats["min"], "max_ratio": stats["max"]}
        print(
            f"\nHEADLINE over {len(ratios)} seeds: median {stats['median']:.2f}x faster "
            f"[{stats['min']:.2f}, {stats['max']:.2f}] (goal >= 3x) "
            f"{'OK' if summary['median_ratio'] >= 3 else 'BELOW GOAL'}; {per_seed}"
        )
    else:
        print(f"\nHEADLINE over {len(ratios)} seeds: no median, a seed did not reach its target; {per_seed}")
    atomic_write_text(
        out / "results.json", json.dumps({"summary": summary, "runs": results}, indent=2) + "\n"
    )
    curves = {
        f"{side} seed {r['seed']}": [Point(**p) for p in r["curves"][side]]
        for r in results
        for side in ("transformers", "ours")
    }
    plot(curves, results[0]["baselines"], results[0]["unit"], out / "time_to_accuracy.png")
    print(f"figures over seeds: {out / 'results.json'}, curves: {out / 'time_to_accuracy.png'}")


def report(ctx: Context, seed: int, curves, runs, target, hit, ratio, out: Path) -> dict:
    args, baselines, per_step, peak, unit = ctx.args, ctx.baselines, ctx.per_step, ctx.peak, ctx.unit
    mlm, nsp = baselines["eval_mlm_baseline_accuracy"], baselines["eval_nsp_baseline_accuracy"]
    print(f"\nconstant answers: MLM {mlm:.4f}, NSP {nsp:.4f}")
    print(f"{'side':13s} {'clock s':>8s} {'step':>5s} {'MLM acc':>8s} {'NSP acc':>8s} {'MLM loss':>8s}")
    for side, points in curves.items():
        for p in points:
            if p.mlm_accuracy is not None:
                print(
                    f"{side:13s} {p.clock_s:8.1f} {p.step:5d} {p.mlm_accuracy:8.4f} {p.nsp_accuracy:8.4f} {p.mlm_loss:8.3f}"
                )
    summary = {}
    for side, points in curves.items():
        slope, last = steady_seconds_per_step(points), points[-1]
        mfu_all = last.step * per_step / (last.clock_s * peak)
        mfu_steady = per_step / (slope * peak) if slope else None
        summary[side] = {
            "steps": last.step, "clock_s": last.clock_s, "total_cpu_s": runs[side].total_cpu_s,
            "wall_s": runs[side].wall_s, "clock_s_per_step": slope, "mfu": mfu_all, "mfu_steady": mfu_steady,
        }  # fmt: skip
        print(
            f"{side}: {last.step} steps in {last.clock_s:.0f} {unit.split(' ')[0]} "
            f"({slope or float('nan'):.2f} per step after start-up, start-up ~{last.clock_s - (slope or 0) * last.step:.0f}); "
            f"MFU {100 * mfu_all:.1f}% overall, {100 * (mfu_steady or float('nan')):.1f}% per step, against {ctx.peak_name} "
            f"({peak / 1e9:.1f} GFLOP/s)"
        )
    if hit is not None:
        print(
            f"\nHEADLINE: transformers reaches MLM accuracy {target.mlm_accuracy:.4f} at the end of its budget "
            f"({target.clock_s:.0f} {unit.split(' ')[0]}, step {target.step}); ours reaches {hit.mlm_accuracy:.4f} at "
            f"{hit.clock_s:.0f} (step {hit.step}): {ratio:.2f}x faster (goal >= 3x) {'OK' if ratio >= 3 else 'BELOW GOAL'}"
        )
    else:
        print(
            f"\nHEADLINE: ours does not reach transformers' final MLM accuracy {target.mlm_accuracy:.4f} within its budget"
        )
    margin = resolution(mlm, baselines["eval_masked_tokens"])
    learned = target.mlm_accuracy > mlm + margin
    if not learned:
        print(
            f"NOTE: transformers' final MLM accuracy {target.mlm_accuracy:.4f} is within {margin:.4f} (2 standard "
            f"errors) of always answering the most frequent token ({mlm:.4f}): the ratio only says who reaches the "
            "unigram level first; a larger --budget-cpu-s measures learning"
        )
    results = {
        "seed": seed, "budget_s": args.budget_cpu_s, "unit": unit, "device": args.device, "baselines": baselines,
        "target": asdict(target), "reached": asdict(hit) if hit else None, "ratio": ratio,
        "target_above_constant": learned, "summary": summary,
        "curves": {side: [asdict(p) for p in points if p.mlm_accuracy is not None] for side, points in curves.items()},
        "load_average": os.getloadavg(),
    }  # fmt: skip
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main))
