"""The training loop, generic over model and batches (pretraining and fine-tuning both run it).

Public API:
    TrainState(step, tokens)                   what the loop advances (saved in trainer_state.json)
    run_training(engine, batches, *, state, max_steps, tracker, ...) -> TrainState

One loop step is one optimizer step = ``gradient_accumulation_steps`` micro batches. The model
returns an object with ``.loss``; ``step_metrics(output)`` may add more scalars (e.g. mlm_loss).
Logged values are means over all ranks and micro batches, so a 2-rank run logs the same loss as
a 1-rank run at the same global batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bertscale.runtime.engine import all_reduce_sum
from bertscale.runtime.faults import Preemption, StepWatchdog
from bertscale.runtime.host_memory import HeapTrimmer
from bertscale.runtime.tracking import Tracker


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # non-padding tokens consumed by all ranks
    preempted: bool = False  # stopped early on a preemption signal


def count_tokens(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return batch["attention_mask"].sum()


def run_training(
    engine: Any,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    state: TrainState,
    max_steps: int,
    tracker: Tracker,
    step_metrics: Callable[[Any], Mapping[str, torch.Tensor | None]] | None = None,
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    eval_every: int = 0,
    save: Callable[[TrainState], None] | None = None,
    save_every: int = 0,
    log_every: int = 10,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    preemption: Preemption | None = None,
    watchdog: StepWatchdog | None = None,
    heap_trim_interval_s: float = 10.0,
) -> TrainState:
    """Train from ``state.step`` to ``max_steps``; ``save``/``evaluate`` are collective callbacks.

    With ``preemption``, every rank stops after the same log step once any rank was signalled (the
    caller checkpoints; at most ``log_every`` steps after the signal); with ``watchdog``, a step that
    never finishes ends the process. On CPU the heap's free pages go back to the OS every
    ``heap_trim_interval_s`` seconds, at a log step (bertscale.runtime.host_memory).
    """
    watchdog = watchdog or StepWatchdog(0, 0)
    trimmer = HeapTrimmer(heap_trim_interval_s if torch.device(engine.device).type == "cpu" else 0)
    accumulation = engine.gradient_accumulation_steps()
    world = dist.get_world_size() if dist.is_initialized() else 1
    # this rank's sums over the logging window, kept on the device: no host sync between logs
    sums: dict[str, torch.Tensor] = {}
    window_steps, window_start = 0, time.perf_counter()
    counted = 0  # tokens of the current window already in state.tokens (a save inside the window)
    engine.train()
    while state.step < max_steps:
        lr = engine.get_lr()[0]  # the rate this step uses (the scheduler steps after it)
        with watchdog.step(state.step + 1):
            for _ in range(accumulation):
                batch = {k: v.to(engine.device, non_blocking=True) for k, v in next(batches).items()}
                output = engine(**batch)
                engine.backward(output.loss)
                engine.step()
                values = {"loss": output.loss, **(step_metrics(output) if step_metrics else {})}
                values["tokens"] = count_tokens(batch)
                for key, value in values.items():
                    if value is not None:
                        sums[key] = sums.get(key, 0) + value.detach().double()
            # agreed at log steps only: they read metrics back anyway, so other steps never wait on the device
            at_log = (state.step + 1) % log_every == 0 or state.step + 1 == max_steps
            stop = preemption is not None and at_log and preemption.agreed(engine.device)
        state.step += 1
        window_steps += 1

        if state.step % log_every == 0 or state.step == max_steps or stop:
            keys = sorted(sums)
            totals = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], engine.device), strict=True))
            seconds = time.perf_counter() - window_start
            tokens = totals.pop("tokens")
            state.tokens += int(tokens) - counted
            counted = 0
            metrics = {k: v / (window_steps * accumulation * world) for k, v in totals.items()}
            metrics |= {"lr": lr, "tokens_per_s": tokens / seconds, "step_time_s": seconds / window_steps}
            if flops_per_token and peak_flops:
                metrics["mfu"] = metrics["tokens_per_s"] * flops_per_token / (peak_flops * world)
            tracker.log_metrics(state.step, metrics)
            sums, window_steps = {}, 0
            trimmer.maybe_release()
            window_start = time.perf_counter()
        if evaluate is not None and eval_every and state.step % eval_every == 0:
            tracker.log_metrics(state.step, evaluate())
            engine.train()
        if save is not None and save_every and state.step % save_every == 0:
            if window_steps:  # the checkpoint's count includes the steps not logged yet
                (window_tokens,) = all_reduce_sum([sums["tokens"]], engine.device)
                state.tokens += int(window_tokens) - counted
                counted = int(window_tokens)
            save(state)
        if window_steps == 0:  # evaluation and checkpoint time is not training throughput
            window_start = time.perf_counter()
        if stop:
            state.preempted = True
            break
    return state
