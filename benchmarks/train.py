"""Training throughput: our BertForPreTraining vs transformers.BertForPreTraining, same batches.

One step = forward + backward + optimizer step, on the path pretraining runs: fp32 (the default on
CPU) with the runtime's AdamW (``runtime.optim.build_optimizer``: no decay on biases/LayerNorm,
fused kernel), which is what a DeepSpeed fp32 engine computes on one rank; bf16/fp16 (the default
on CUDA) through a DeepSpeed engine built by ``runtime.engine.create_engine`` with bf16 enabled
(weights and arithmetic in bf16, fp32 master weights in ZeRO-1), as bert_base_phase1.yaml trains,
never ``torch.autocast``. Both models see the same realistic pretraining batches, made by the
pretraining collate (``pretrain.data.collate``, which also hands our model its host-built
unpadding indices): sequence pairs whose lengths follow Google's create_pretraining_data (most
fill max_seq_length, short_seq_prob=0.1 are shorter, some end at a document boundary), padded to
max_seq_length as run_mlm / NVIDIA's BERT do, 15% of the non-special tokens masked (labels -100
elsewhere), random NSP labels. Tokens/s counts real (non-pad) tokens only, for both. Steps of the
two models are interleaved so that load from other processes on a shared machine hits both alike;
median step times and the median of the paired (same batch, back to back) step-time ratios are
reported.

MFU: model FLOP/s (bertscale.model.training_flops_per_token: the work the two losses need, i.e.
the encoder over real tokens with the last layer's FFN at masked tokens, attention over the real
length, the MLM head at masked tokens; identical for both models, so HuggingFace's
full-vocabulary logits at every position count as waste, not as work) divided by (a) the FLOP/s
this machine reaches on one large matmul in the training dtype and, on a GPU, (b) its datasheet
dense bf16 peak (``runtime.tracking.PEAK_BF16_TFLOPS``, e.g. H100/H200 989, A100 312; an unknown
GPU is named and gets no such figure unless --peak-tflops gives one). "speed-up by process CPU
time" is the same comparison in CPU seconds, which time-sharing with other processes does not
inflate (with --threads 1 it is the most load-robust figure).

    python benchmarks/train.py                      # both configs, ~2-3 min on 2 CPU cores
    python benchmarks/train.py --steps 20 --batch-size 32 --configs L8-H512
    python benchmarks/train.py --device cuda --batch-size 64 --steps 30     # bf16 DeepSpeed engine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transformers

from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.masking import IGNORE_INDEX, mask_sequence
from bertscale.model import BertConfig, BertForPreTraining, training_flops_per_token
from bertscale.pretrain.data import collate
from bertscale.runtime.config import EngineConfig, OptimizerConfig, ScheduleConfig
from bertscale.runtime.optim import build_optimizer
from bertscale.runtime.tracking import PEAK_BF16_TFLOPS, peak_flops_per_device

CONFIGS = {  # name -> (BertConfig overrides, goal for our speed-up over HuggingFace)
    "L4-H256": (
        dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
        3.0,
    ),
    "L8-H512": (
        dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
        1.5,
    ),
}


# --- batches ---------------------------------------------------------------------------------


def sequence_lengths(
    n: int, max_seq_length: int, short_seq_prob: float, rng: np.random.Generator
) -> np.ndarray:
    """Lengths of [CLS] A [SEP] B [SEP] as create_pretraining_data.py produces them.

    With short_seq_prob the target is uniform in [2, max - 3]; otherwise segments are filled to the
    full length and truncated, except when a document runs out first (modelled as 15% of pairs,
    uniform in [max/2, max]).
    """
    full = np.full(n, max_seq_length)
    short = rng.integers(2, max_seq_length - 3, n, endpoint=True) + 3
    doc_end = rng.integers(max_seq_length // 2, max_seq_length, n, endpoint=True)
    draw = rng.random(n)
    return np.where(draw < short_seq_prob, short, np.where(draw < short_seq_prob + 0.15, doc_end, full))


def make_batch(
    batch_size: int,
    max_seq_length: int,
    vocab_size: int,
    rng: np.random.Generator,
    masked_lm_prob: float = 0.15,
) -> dict[str, Any]:
    """A right-padded batch padded to max_seq_length, made by the pretraining collate (HF keys plus
    our model's ``unpad_indices``)."""
    lengths = sequence_lengths(batch_size, max_seq_length, 0.1, rng)
    special = trained_special(vocab_size)  # a trained SentencePiece's ids: only their shape matters here
    vocab, first_word = special.masking_vocab(), len(special.ids)
    input_ids = np.full((batch_size, max_seq_length), special.pad_id, dtype=np.int64)
    labels = np.full((batch_size, max_seq_length), IGNORE_INDEX, dtype=np.int64)
    token_type_ids = np.zeros((batch_size, max_seq_length), dtype=np.int64)
    for i, length in enumerate(lengths):
        ids = rng.integers(first_word, vocab_size, length)
        len_a = int(rng.integers(1, length - 2)) if length > 3 else 1
        ids[0], ids[len_a], ids[length - 1] = special.cls_id, special.sep_id, special.sep_id
        token_type_ids[i, len_a + 1 : length] = 1
        input_ids[i, :length], labels[i, :length] = mask_sequence(ids, rng, vocab, masked_lm_prob)  # dynamic
    return collate(input_ids, token_type_ids, lengths, labels, rng.integers(0, 2, batch_size))


# --- measurement -----------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(
    device: torch.device,
    dtype: torch.dtype,
    n: int,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Best FLOP/s of an (n, n) @ (n, n) matmul: this machine's practical peak in ``dtype``.

    ``clock=time.process_time`` (one thread) gives FLOPs per CPU-second, which other processes'
    load does not lower."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        a @ b
        synchronize(device)
        best = min(best, clock() - start)
    return 2 * n**3 / best


@dataclass
class Runner:
    """One model and its optimizer (or DeepSpeed engine); ``step`` runs one training step, returns
    (wall, CPU) seconds."""

    name: str
    model: torch.nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer | None = None  # fp32: the runtime's AdamW
    engine: Any = None  # bf16/fp16: a DeepSpeed engine, as pretraining builds it
    takes_unpad_indices: bool = False  # transformers' model takes HF keys only

    def step(self, batch: dict[str, Any]) -> tuple[float, float]:
        if not self.takes_unpad_indices:
            batch = {key: value for key, value in batch.items() if key != "unpad_indices"}
        batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        synchronize(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        if self.engine is not None:
            loss = self.engine(**batch).loss
            self.engine.backward(loss)
            self.engine.step()
        else:
            loss = self.model(**batch).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu_start


def build_runners(config: BertConfig, device: torch.device, args: argparse.Namespace) -> list[Runner]:
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**config.to_hf_dict())  # attn_implementation: default (sdpa)
    hf = transformers.BertForPreTraining(hf_config).train()
    ours = BertForPreTraining(config).train()
    ours.load_state_dict(hf.state_dict())  # same starting weights, so the same losses
    optimizer_cfg = OptimizerConfig(lr=args.lr, weight_decay=0.01)
    models = {"transformers": hf, "bertscale": ours}
    if args.engine == "torch":
        return [
            Runner(name, model.to(device), device, optimizer=build_optimizer(model.to(device), optimizer_cfg),
                   takes_unpad_indices=model is ours)
            for name, model in models.items()
        ]  # fmt: skip
    from bertscale.runtime.engine import create_engine, init_distributed

    init_distributed()  # a process group of one (gloo on CPU, nccl on a GPU)
    if args.threads:  # init_distributed picks a thread count for ranks sharing a host
        torch.set_num_threads(args.threads)
    engine_cfg = EngineConfig(zero_stage=1, precision=args.precision, gradient_clipping=1.0)
    schedule = ScheduleConfig(warmup_steps=0, decay="constant")
    runners = []
    for name, model in models.items():
        engine = create_engine(model, engine_cfg, optimizer_cfg, schedule, args.batch_size, max_steps=1 << 30)
        runners.append(Runner(name, engine.module, engine.device, engine=engine, takes_unpad_indices=model is ours))
    return runners


def bench(
    name: str, args: argparse.Namespace, device: torch.device, peak: float, datasheet_peak: float | None
) -> float:
    overrides, goal = CONFIGS[name]
    config = BertConfig(vocab_size=args.vocab_size, max_position_embeddings=512, **overrides)
    rng = np.random.default_rng(args.seed)
    batches = [make_batch(args.batch_size, args.seq_len, config.vocab_size, rng) for _ in range(args.steps)]
    runners = build_runners(config, device, args)
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    cpu_times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        for runner in runners if i % 2 else reversed(runners):  # alternate who goes first
            wall, cpu = runner.step(batch)
            if i >= args.warmup:
                times[runner.name].append(wall)
                cpu_times[runner.name].append(cpu)

    real_tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    masked = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    mlm_fraction = masked / (real_tokens * len(batches))
    mean_length = real_tokens / args.batch_size
    flops_per_token = training_flops_per_token(config, round(mean_length), mlm_fraction)
    params = runners[1].model.num_parameters()
    print(
        f"\n{name}: {params / 1e6:.1f}M params, batch {args.batch_size} x {args.seq_len} padded, "
        f"{real_tokens:.0f} real tokens/batch (mean length {mean_length:.1f}), "
        f"{100 * mlm_fraction:.1f}% masked, {flops_per_token / 1e6:.1f} MFLOP/token"
    )
    rate = {}
    for runner in runners:
        step, best = statistics.median(times[runner.name]), min(times[runner.name])
        rate[runner.name] = real_tokens / step
        achieved = rate[runner.name] * flops_per_token
        of_datasheet = f"  MFU {100 * achieved / datasheet_peak:5.1f}% of peak" if datasheet_peak else ""
        print(
            f"  {runner.name:13s} {rate[runner.name]:9.0f} tokens/s  step {1000 * step:7.1f} ms "
            f"(best {1000 * best:7.1f})  {achieved / 1e9:7.1f} GFLOP/s  "
            f"MFU {100 * achieved / peak:5.1f}% of matmul{of_datasheet}"
        )
    # pairs of steps on the same batch, run back to back: the ratio is robust to load that comes and goes
    pairs = [hf / ours for hf, ours in zip(times["transformers"], times["bertscale"], strict=True)]
    ratio = statistics.median(pairs)
    print(
        f"  speed-up {ratio:.2f}x (median of {len(pairs)} paired steps, "
        f"range {min(pairs):.2f}-{max(pairs):.2f}; goal >= {goal}x) {'OK' if ratio >= goal else 'BELOW GOAL'}"
    )
    # CPU seconds are not inflated by waiting for a core; with --threads 1 they are the step's own work
    cpu_ratio = statistics.median(cpu_times["transformers"]) / statistics.median(cpu_times["bertscale"])
    print(f"  speed-up by process CPU time {cpu_ratio:.2f}x")
    return ratio


def check_device(device: str) -> torch.device:
    """The device, or one line on stderr and exit 2 when this machine has none of that kind."""
    try:
        parsed = torch.device(device)
        torch.empty(1, device=parsed)
    except (RuntimeError, AssertionError) as err:  # torch raises either for an absent backend
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: --device {device}: not available on this machine ({reason})", file=sys.stderr)
        raise SystemExit(2) from None
    return parsed


def datasheet_peak(device: torch.device, precision: str, configured_tflops: float | None) -> tuple[float | None, str]:
    """(FLOP/s, what it is) of the GPU's dense bf16/fp16 peak; None where there is none to use."""
    if configured_tflops:
        return configured_tflops * 1e12, f"--peak-tflops {configured_tflops:g}"
    if device.type != "cuda":
        return None, "no datasheet peak on CPU: MFU is against the measured matmul rate only"
    name = torch.cuda.get_device_name(device)
    if precision == "fp32":
        return None, f"{name} in fp32: the table holds bf16 peaks; MFU is against the measured matmul rate"
    with torch.cuda.device(device):
        peak = peak_flops_per_device(None)
    if peak is None:
        return None, (
            f"unknown GPU '{name}' (known: {', '.join(PEAK_BF16_TFLOPS)}): no datasheet peak, "
            "MFU is against the measured matmul rate only (--peak-tflops sets one)"
        )
    return peak, f"{name}: {peak / 1e12:g} TFLOP/s dense bf16 (datasheet)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=30522)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default=None, help="default: bf16 on CUDA, else fp32"
    )
    parser.add_argument(
        "--engine", choices=("torch", "deepspeed"), default=None,
        help="default: deepspeed for bf16/fp16 (as training), torch (the same AdamW arithmetic) for fp32",
    )  # fmt: skip
    parser.add_argument("--matmul-size", type=int, default=None, help="default: 8192 on CUDA, else 2048")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    names = args.configs.split(",")
    if unknown := set(names) - set(CONFIGS):
        parser.error(f"unknown config(s) {sorted(unknown)}; choose from {list(CONFIGS)}")
    device = check_device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    args.engine = args.engine or ("torch" if args.precision == "fp32" else "deepspeed")
    if args.engine == "torch" and args.precision != "fp32":
        parser.error(f"--precision {args.precision} trains through DeepSpeed's engine, as pretraining does")

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_flops(device, dtype, matmul_size)
    datasheet, about_peak = datasheet_peak(device, args.precision, args.peak_tflops)
    print(  # the load average tells how much other processes may have disturbed the timings
        f"device {device} ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs), torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{args.precision} via {args.engine}; {matmul_size}^3 {str(dtype).removeprefix('torch.')} "
        f"matmul: {peak / 1e9:.1f} GFLOP/s; peak: {about_peak}"
    )
    for name in names:
        bench(name, args, device, peak, datasheet)


if __name__ == "__main__":
    main()
