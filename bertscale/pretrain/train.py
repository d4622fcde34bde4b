"""Pretraining job: config -> model -> DeepSpeed engine -> the loop, with eval, checkpoints and tracking.

``main(cfg)`` runs on every rank (launched by ``deepspeed --module bertscale.pretrain`` or plain
``python -m bertscale.pretrain``); everything rank-specific (data slice, tracking on rank 0) is decided here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

from bertscale.atomic import atomic_write_text, prepare_output_dir
from bertscale.config import save_config, to_dict
from bertscale.data_pipeline.schema import Manifest, load_manifest
from bertscale.errors import ConfigError
from bertscale.model import BertConfig, BertForPreTraining, BertForPreTrainingOutput
from bertscale.model_dir import CONFIG, LATEST, find_tokenizer
from bertscale.pretrain.checkpoint import find_resume, load_checkpoint, save_checkpoint
from bertscale.pretrain.config import PretrainConfig
from bertscale.pretrain.data import PretrainBatches, StreamState, eval_batches
from bertscale.pretrain.init_from import load_init, load_init_weights
from bertscale.runtime.engine import all_reduce_sum, build_ds_config, create_engine, init_distributed
from bertscale.runtime.loop import TrainState, run_training
from bertscale.runtime.tracking import Tracker, peak_flops_per_device

log = logging.getLogger("bertscale")


def pretraining_losses(output: BertForPreTrainingOutput) -> dict[str, torch.Tensor | None]:
    return {"mlm_loss": output.mlm_loss, "nsp_loss": output.nsp_loss}


@torch.no_grad()
def evaluate(engine, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """MLM and NSP accuracy (and losses) over the fixed validation batches of all ranks."""
    engine.eval()
    local = dict.fromkeys(("mlm_correct", "masked", "nsp_correct", "sequences", "mlm_loss", "nsp_loss"), 0.0)
    for batch in batches:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        out = engine(**batch)
        masked, sequences = out.masked_lm_labels.numel(), batch["next_sentence_label"].numel()
        local["mlm_correct"] += float((out.prediction_logits.argmax(-1) == out.masked_lm_labels).sum())
        local["masked"] += masked
        local["nsp_correct"] += float(
            (out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        )
        local["sequences"] += sequences
        local["mlm_loss"] += float(out.mlm_loss) * masked  # the losses are means: summed back per item
        local["nsp_loss"] += float(out.nsp_loss) * sequences
    total = dict(zip(local, all_reduce_sum(list(local.values()), engine.device), strict=True))
    if not total["sequences"]:
        return {}
    return {
        "eval_mlm_accuracy": total["mlm_correct"] / total["masked"],
        "eval_nsp_accuracy": total["nsp_correct"] / total["sequences"],
        "eval_mlm_loss": total["mlm_loss"] / total["masked"],
        "eval_nsp_loss": total["nsp_loss"] / total["sequences"],
    }


RUN_FILES = frozenset(
    {"config.yaml", "ds_config.json", "metrics.jsonl", "checkpoints", "mlflow.db", "mlartifacts"}
)


def _resumable_run(output_dir: Path, resume: str) -> bool:
    """A run dir of ours that this run continues: nothing else in it, and resume=never would not
    overwrite and prune the checkpoints of an earlier run."""
    entries = {p.name for p in output_dir.iterdir()}
    checkpoints = output_dir / "checkpoints"
    earlier = checkpoints.is_dir() and any(checkpoints.iterdir())
    return entries <= RUN_FILES and not (resume == "never" and earlier)


MIN_EVAL_SEQUENCES = 500  # below this an accuracy's standard error exceeds ~0.02: say so


def majority_baselines(batches: list[dict[str, torch.Tensor]], vocab_size: int, device) -> dict[str, float]:
    """Accuracy of a constant answer on the validation batches of all ranks: always the most frequent
    masked target token (MLM), always the more frequent label (NSP). What learning must beat."""
    counts = torch.zeros(vocab_size + 2, dtype=torch.float64)  # per target id, then NSP labels 0/1
    for batch in batches:
        targets = batch["labels"][batch["labels"] >= 0]
        counts[:vocab_size] += torch.bincount(targets, minlength=vocab_size)[:vocab_size].double()
        counts[vocab_size:] += torch.bincount(batch["next_sentence_label"], minlength=2)[:2].double()
    counts = counts.to(device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    mlm, nsp = counts[:vocab_size], counts[vocab_size:]
    if not nsp.sum():
        return {}
    return {
        "eval_mlm_baseline_accuracy": float(mlm.max() / mlm.sum().clamp(min=1)),
        "eval_nsp_baseline_accuracy": float(nsp.max() / nsp.sum()),
        "eval_sequences": float(nsp.sum()),
        "eval_masked_tokens": float(mlm.sum()),
    }


def token_budget_samples(cfg: PretrainConfig, manifest: Manifest) -> int | None:
    """``schedule.budget_tokens`` in samples of the training split (its mean tokens per sample)."""
    budget = cfg.schedule.budget_tokens
    split = manifest.splits.get(cfg.data.split)
    if budget is None or split is None or not split.samples:
        return None  # no budget; a missing split is reported by the reader
    samples = max(1, round(budget * split.samples / split.tokens))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.data.micro_batch_size * cfg.engine.gradient_accumulation_steps * world
    warmup = cfg.schedule.warmup_steps * per_step
    if samples <= warmup:
        raise ConfigError(
            f"schedule.budget_tokens={budget} ({samples} samples at {split.tokens / split.samples:.1f} "
            f"tokens each) ends before the {cfg.schedule.warmup_steps} warmup steps ({warmup} samples "
            f"at {per_step} per step)"
        )
    return samples


def main(cfg: PretrainConfig) -> TrainState:
    # user input is checked before any process group exists: a bad path fails fast and clearly
    prepare_output_dir(
        cfg.output_dir,
        key="output_dir",
        overwrite=cfg.overwrite,
        overwrite_hint="overwrite=true",
        inputs=[cfg.data.shards, cfg.checkpoint.init_from],
        reusable=lambda out: _resumable_run(out, cfg.checkpoint.resume),
    )
    manifest = load_manifest(cfg.data.shards)
    init = load_init(cfg.checkpoint.init_from, manifest, cfg.data.shards) if cfg.checkpoint.init_from else None
    if init is not None:  # the checkpoint's architecture (vocab size, max positions, every shape)
        for f in dataclasses.fields(BertConfig):
            if f.name != "gradient_checkpointing":
                setattr(cfg.model, f.name, getattr(init.config, f.name))
    bert_config = cfg.model.resolve(manifest.vocab_size)
    if bert_config.vocab_size < manifest.vocab_size:
        raise ConfigError(
            f"model.vocab_size {bert_config.vocab_size} < the tokenizer's {manifest.vocab_size} "
            f"({cfg.data.shards / 'manifest.json'})"
        )
    cfg.model.vocab_size = bert_config.vocab_size  # the saved config is the resolved one
    bert_config.gradient_checkpointing |= cfg.engine.activation_checkpointing
    output_dir, checkpoints = cfg.output_dir, cfg.output_dir / "checkpoints"
    resume = find_resume(cfg.checkpoint.resume, output_dir)
    ds_config = build_ds_config(cfg.engine, cfg.data.micro_batch_size)
    budget_samples = token_budget_samples(cfg, manifest)
    tokenizer = find_tokenizer(cfg.data.shards)

    dist = init_distributed()
    logging.basicConfig(
        level=logging.INFO if dist.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {dist.rank}] %(message)s",
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = BertForPreTraining(bert_config)
    new_tensors: list[str] = []
    if init is not None:
        new_tensors = load_init_weights(model, init.state_dict, f"checkpoint.init_from={cfg.checkpoint.init_from}")
        init = None  # the checkpoint's copy is no longer needed
        log.info(
            "initialised weights from %s; %d tensors freshly initialised (not in the checkpoint): %s",
            cfg.checkpoint.init_from, len(new_tensors), ", ".join(new_tensors) or "none",
        )  # fmt: skip
    engine = create_engine(
        model,
        cfg.engine,
        cfg.optimizer,
        cfg.schedule,
        cfg.data.micro_batch_size,
        cfg.max_steps,
        budget_samples=budget_samples,
    )
    torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout differs between ranks

    state, data_state = TrainState(), None
    if resume is not None:
        saved = load_checkpoint(engine, resume)  # also restores this rank's RNG
        state = TrainState(step=saved["step"], tokens=saved.get("tokens", 0))
        data_state = StreamState.from_dict(saved["data"])
        log.info("resumed from %s at step %d", resume, state.step)

    batches = PretrainBatches(
        cfg.data.shards,
        cfg.data.split,
        micro_batch_size=cfg.data.micro_batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        num_workers=cfg.data.num_workers,
        masking=cfg.data.masking,
        masked_lm_prob=cfg.data.masked_lm_prob,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq,
        seed=cfg.seed,
        max_position_embeddings=bert_config.max_position_embeddings,
        state=data_state,
        on_corrupt_shard=cfg.data.on_corrupt_shard,
    )
    validation = (
        eval_batches(
            cfg.data.shards,
            cfg.data.eval_split,
            micro_batch_size=cfg.data.micro_batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            max_batches=cfg.eval.max_batches,
        )
        if cfg.data.eval_split in manifest.splits
        else []
    )

    baselines = majority_baselines(validation, bert_config.vocab_size, engine.device) if validation else {}
    if validation and baselines.get("eval_sequences", 0) < MIN_EVAL_SEQUENCES:
        log.warning(
            "%s split %s: %d sequences evaluated (eval.max_batches=%d): accuracy is too noisy to compare "
            "runs below %d",
            cfg.data.eval_split,
            cfg.data.shards,
            baselines.get("eval_sequences", 0),
            cfg.eval.max_batches,
            MIN_EVAL_SEQUENCES,
        )

    last_eval: dict[str, float] = {}

    def evaluate_with_baselines() -> dict[str, float]:
        last_eval.update(evaluate(engine, validation), **baselines)
        return dict(last_eval)

    tracker = Tracker(cfg.mlflow, None, output_dir=output_dir, enabled=dist.rank == 0)
    if dist.rank == 0:
        save_config(cfg, output_dir / "config.yaml")
        ds_json = output_dir / "ds_config.json"
        atomic_write_text(ds_json, json.dumps(ds_config, indent=2))
        tracker.log_params(
            {
                **to_dict(cfg),
                "world_size": dist.world_size,
                "parameters": model.num_parameters(),
                "resumed_from": str(resume or ""),
                "init_new_tensors": ", ".join(new_tensors) if cfg.checkpoint.init_from else "",
            }
        )

    def save(s: TrainState) -> None:
        save_checkpoint(
            engine,
            checkpoints,
            s.step,
            bert_config=bert_config,
            run_config=cfg,
            tokenizer=tokenizer,
            trainer_state={
                "tokens": s.tokens,
                "world_size": dist.world_size,
                "data": batches.state.to_dict(),
            },
            keep_last=cfg.checkpoint.keep_last,
        )

    stop_at = cfg.max_steps
    if budget_samples is not None:  # the budget ends the run; the scheduler knows how far it is
        stop_at = min(stop_at, state.step + engine.lr_scheduler.steps_left())
        log.info(
            "token budget %d = %d samples: training stops at step %d",
            cfg.schedule.budget_tokens,
            budget_samples,
            stop_at,
        )
    if cfg.debug.exit_after_step is not None:
        stop_at = min(stop_at, cfg.debug.exit_after_step)
    status = "FAILED"
    try:
        state = run_training(
            engine,
            iter(batches),
            state=state,
            max_steps=stop_at,
            tracker=tracker,
            step_metrics=pretraining_losses,
            evaluate=evaluate_with_baselines if validation else None,
            eval_every=cfg.eval.every,
            save=save,
            save_every=cfg.checkpoint.save_every,
            log_every=cfg.metrics.log_every,
            flops_per_token=model.flops_per_token(manifest.max_seq_length),
            peak_flops=peak_flops_per_device(cfg.metrics.peak_tflops),
        )
        if cfg.debug.exit_after_step is not None and state.step >= cfg.debug.exit_after_step:
            log.warning("debug.exit_after_step=%d: exiting without cleanup", state.step)
            os._exit(17)  # what a crash looks like: no final save, no tracker close
        if cfg.data.on_corrupt_shard == "skip":  # collective: counted over the whole run, all ranks
            (skipped,) = all_reduce_sum([batches.skipped_shards], engine.device)
            tracker.log_metrics(state.step, {"skipped_shards": skipped})
        if validation and not (cfg.eval.every and state.step % cfg.eval.every == 0):
            tracker.log_metrics(state.step, evaluate_with_baselines())
        if last_eval.get("eval_mlm_accuracy") is not None:
            log.info(
                "eval at step %d: MLM accuracy %.4f (always the most frequent token: %.4f, %.2fx); "
                "NSP accuracy %.4f (majority label: %.4f); %d sequences",
                state.step,
                last_eval["eval_mlm_accuracy"],
                last_eval["eval_mlm_baseline_accuracy"],
                last_eval["eval_mlm_accuracy"] / max(last_eval["eval_mlm_baseline_accuracy"], 1e-12),
                last_eval["eval_nsp_accuracy"],
                last_eval["eval_nsp_baseline_accuracy"],
                last_eval["eval_sequences"],
            )
        if not (cfg.checkpoint.save_every and state.step % cfg.checkpoint.save_every == 0):
            save(state)
        status = "FINISHED"
    finally:
        if dist.rank == 0:
            for artifact in ("config.yaml", "ds_config.json", "metrics.jsonl"):
                tracker.log_artifact(output_dir / artifact)
            latest = checkpoints / LATEST
            if latest.is_file():
                tracker.log_artifact(checkpoints / latest.read_text().strip() / CONFIG)
        tracker.close(status)
    return state
