"""Pretraining job: config -> model -> DeepSpeed engine -> the loop, with eval, checkpoints and tracking.

``main(cfg)`` runs on every rank (launched by ``deepspeed --module bertscale.pretrain`` or plain
``python -m bertscale.pretrain``); everything rank-specific (data slice, tracking on rank 0) is decided here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bertscale.atomic import atomic_write_text, prepare_output_dir
from bertscale.config import save_config, to_dict
from bertscale.data_pipeline.schema import Manifest, load_manifest
from bertscale.errors import ConfigError
from bertscale.model import BertConfig, BertForPreTraining, BertForPreTrainingOutput
from bertscale.model_dir import CONFIG, LATEST, find_tokenizer, load_pretrained, save_model_dir
from bertscale.pretrain.checkpoint import (
    check_parameter_names,
    find_resume,
    load_checkpoint,
    needs_universal,
    read_trainer_state,
    save_checkpoint,
    universal_checkpoint,
)
from bertscale.pretrain.config import PretrainConfig
from bertscale.pretrain.data import PretrainBatches, eval_batches
from bertscale.pretrain.init_from import init_readout_head, load_init, load_init_weights, token_counts
from bertscale.runtime.engine import (
    all_gather_object,
    all_reduce_sum,
    build_ds_config,
    create_engine,
    init_distributed,
)
from bertscale.runtime.faults import Preempted, Preemption, StepWatchdog
from bertscale.runtime.loop import TrainState, run_training
from bertscale.runtime.tracking import Tracker, job_tracker, node_monitor, peak_flops_per_device

HF_CONFIG = "config.json"  # transformers' name for bert_config.json (see bertscale.finetune.export)

log = logging.getLogger("bertscale")
DROPOUT_STREAM = 0xD0  # keeps the dropout seeds apart from the masking generators' (seed, step, micro batch)


def plan_resume(cfg: PretrainConfig, saved: dict, world_size: int) -> None:
    """Fit ``cfg`` to a checkpoint from another world size: same global batch, same sample sequence.

    The data position is (step, lanes = micro batches per step, micro batch size); ranks x
    accumulation steps may trade as long as their product (the lanes) stays.
    """
    data, where = saved["data"], f"resume from step {saved['step']}"
    if data["micro_batch_size"] != cfg.data.micro_batch_size:
        raise ConfigError(
            f"{where}: saved with data.micro_batch_size={data['micro_batch_size']}, "
            f"config has {cfg.data.micro_batch_size}; keep it to continue the same samples and masks"
        )
    for key in ("seed", "masking"):
        ours = cfg.seed if key == "seed" else cfg.data.masking
        if data[key] != ours:
            raise ConfigError(f"{where}: saved with {key}={data[key]}, config has {ours}")
    lanes = data["lanes"]
    if lanes % world_size:
        raise ConfigError(
            f"{where}: its global batch is {lanes} micro batches, which {world_size} ranks cannot split evenly"
        )
    accumulation = lanes // world_size
    if accumulation != cfg.engine.gradient_accumulation_steps:
        log.warning(
            "elastic resume: %d ranks -> %d; engine.gradient_accumulation_steps %d -> %d keeps the global "
            "batch of %d sequences",
            saved["world_size"], world_size, cfg.engine.gradient_accumulation_steps, accumulation,
            lanes * data["micro_batch_size"],
        )  # fmt: skip
        cfg.engine.gradient_accumulation_steps = accumulation


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


def _seeded(batches: PretrainBatches, seed: int) -> Iterator[dict]:
    """Reseed torch before each micro batch from (seed, step, micro batch): dropout masks then follow
    the sample sequence, not the rank that happens to run them (exact elastic resume with dropout)."""
    for batch in batches:
        step, lane = batches.current
        torch.manual_seed(
            int(np.random.SeedSequence([seed, step, lane, DROPOUT_STREAM]).generate_state(1)[0])
        )
        yield batch


def _stall(batches: Iterator[dict], after: int) -> Iterator[dict]:
    """debug.stall_at_step: this rank hangs (as a stuck GPU or a stopped process would) after ``after`` batches."""
    for served, batch in enumerate(batches):
        if served == after:
            log.warning("debug.stall_at_step: rank stalls here")
            time.sleep(24 * 3600)
        yield batch


RUN_FILES = frozenset(
    {"config.yaml", "ds_config.json", "metrics.jsonl", "checkpoints", "mlflow.db", "mlartifacts", "universal"}
)
SAMPLE_LOG = re.compile(r"^sample_ids\.rank\d+\.jsonl$")  # debug.log_sample_ids


def _resumable_run(output_dir: Path, resume: str) -> bool:
    """A run dir of ours that this run continues: nothing else in it, and resume=never would not
    overwrite and prune the checkpoints of an earlier run."""
    entries = {p.name for p in output_dir.iterdir() if not SAMPLE_LOG.match(p.name)}
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


def shards_dataset(shards: Path):
    """The pipeline's manifest as an MLflow dataset (lineage imports mlflow: only where tracking is on)."""
    from bertscale.runtime.lineage import manifest_dataset

    return manifest_dataset(shards)


def describe_run(
    cfg: PretrainConfig, bert: BertConfig, parameters: int, manifest: Manifest, world_size: int,
    resume: Path | None,
) -> str:  # fmt: skip
    """The run page's description: what is trained, on what, how (Markdown)."""
    train = manifest.splits.get(cfg.data.split)
    data = f"{train.tokens:,} tokens in {len(train.shards)} shards" if train else "no train split"
    start = (
        f"resumed from `{resume}`" if resume else
        f"initialised from `{cfg.checkpoint.init_from}`" if cfg.checkpoint.init_from else "from scratch"
    )  # fmt: skip
    return (
        f"**Pretraining** BERT L{bert.num_hidden_layers}/H{bert.hidden_size} "
        f"({parameters / 1e6:.1f}M parameters, vocab {bert.vocab_size}, MLM + NSP), {start}.\n\n"
        f"Data: `{cfg.data.shards}` ({data}; tokenizer {manifest.tokenizer_sha256[:12]}).\n\n"
        f"{cfg.max_steps} steps of {cfg.data.micro_batch_size} x {world_size} ranks x "
        f"{cfg.engine.gradient_accumulation_steps} sequences, DeepSpeed ZeRO-{cfg.engine.zero_stage}, "
        f"{cfg.engine.precision}, {cfg.optimizer.name} lr {cfg.optimizer.lr}."
    )


def register_final(tracker: Tracker, model_id: str, step_dir: Path, name: str) -> None:
    """Register the last checkpoint as ``name``: its HuggingFace layout uploaded into the logged model."""
    pretrained = load_pretrained(step_dir)
    with tempfile.TemporaryDirectory(dir=step_dir.parent) as tmp:
        hf_dir = save_model_dir(
            Path(tmp) / "hf", pretrained.config, pretrained.state_dict, pretrained.tokenizer,
            config_name=HF_CONFIG,
        )  # fmt: skip
        tracker.register(model_id, hf_dir, name)


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
    init = (
        load_init(cfg.checkpoint.init_from, manifest, cfg.data.shards) if cfg.checkpoint.init_from else None
    )
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
    saved = read_trainer_state(resume) if resume is not None else None
    tokenizer = find_tokenizer(cfg.data.shards)

    dist = init_distributed(cfg.engine.collective_timeout_s)
    logging.basicConfig(
        level=logging.INFO if dist.rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {dist.rank}] %(message)s",
    )
    preemption = Preemption().install()
    universal = False
    if saved is not None:
        plan_resume(cfg, saved, dist.world_size)
        universal = needs_universal(saved, dist.world_size, cfg.engine.zero_stage)
    ds_config = build_ds_config(cfg.engine, cfg.data.micro_batch_size, universal)
    budget_samples = token_budget_samples(cfg, manifest)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = BertForPreTraining(bert_config)
    new_tensors: list[str] = []
    if init is not None:
        new_tensors = load_init_weights(
            model, init.state_dict, f"checkpoint.init_from={cfg.checkpoint.init_from}"
        )
        init = None  # the checkpoint's copy is no longer needed
        readout: list[str] = []
        if cfg.checkpoint.init_new_mlm_head == "readout":
            counts = token_counts(cfg.data.shards, manifest, cfg.data.split)
            readout = init_readout_head(model, new_tensors, counts)
        log.info(
            "initialised weights from %s; %d tensors freshly initialised (not in the checkpoint, lr x %g): %s%s",
            cfg.checkpoint.init_from, len(new_tensors), cfg.checkpoint.init_new_lr_scale, ", ".join(new_tensors) or "none",
            f"; MLM head as a readout (identity transform, log unigram bias): {', '.join(readout)}" if readout else "",
        )  # fmt: skip
    engine = create_engine(
        model,
        cfg.engine,
        cfg.optimizer,
        cfg.schedule,
        cfg.data.micro_batch_size,
        cfg.max_steps,
        budget_samples=budget_samples,
        load_universal=universal,
        lr_scale=dict.fromkeys(new_tensors, cfg.checkpoint.init_new_lr_scale),
    )
    torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout differs between ranks

    state = TrainState()
    if resume is not None and saved is not None:
        check_parameter_names(engine, resume)
        if universal:  # another world size or ZeRO stage: the ZeRO partitions are cut afresh
            converted = universal_checkpoint(resume, output_dir / "universal")
            load_checkpoint(engine, resume, converted)
            torch.manual_seed(cfg.seed + 1 + dist.rank + 7919 * saved["step"])  # no saved RNG for this rank
        else:
            load_checkpoint(engine, resume)  # also restores this rank's RNG
        state = TrainState(step=saved["step"], tokens=saved.get("tokens", 0))
        log.info(
            "resumed from %s at step %d (saved by %d ranks, ZeRO stage %s)",
            resume, state.step, saved["world_size"], saved.get("zero_stage", "?"),
        )  # fmt: skip

    batches = PretrainBatches(
        cfg.data.shards,
        cfg.data.split,
        micro_batch_size=cfg.data.micro_batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        gradient_accumulation_steps=cfg.engine.gradient_accumulation_steps,
        num_workers=cfg.data.num_workers,
        masking=cfg.data.masking,
        masked_lm_prob=cfg.data.masked_lm_prob,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq,
        seed=cfg.seed,
        max_position_embeddings=bert_config.max_position_embeddings,
        pad_to_multiple_of=cfg.data.pad_to_multiple_of,
        start_step=state.step,
        on_corrupt_shard=cfg.data.on_corrupt_shard,
        sample_log=output_dir / f"sample_ids.rank{dist.rank}.jsonl" if cfg.debug.log_sample_ids else None,
    )
    if saved is not None:
        batches.skipped.update(saved["data"].get("skipped_shards", []))
    validation = (
        eval_batches(
            cfg.data.shards,
            cfg.data.eval_split,
            micro_batch_size=cfg.data.micro_batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            max_batches=cfg.eval.max_batches,
            pad_to_multiple_of=cfg.data.pad_to_multiple_of,
            max_position_embeddings=bert_config.max_position_embeddings,
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

    description = describe_run(cfg, bert_config, model.num_parameters(), manifest, dist.world_size, resume)
    tracker = job_tracker(cfg.mlflow, dist, output_dir=output_dir, job="pretrain", description=description)
    run_id = all_gather_object(tracker.run_id)[0]
    first_of_node = dist.local_rank == 0 and tracker.hosts[dist.rank] != tracker.hosts[0]
    monitor = node_monitor(cfg.mlflow, run_id) if first_of_node else None
    if dist.rank == 0:
        tracker.log_dataset(lambda: shards_dataset(cfg.data.shards))
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

    final_model: list[tuple[str, Path]] = []  # the last checkpoint's logged model id and step dir

    def save(s: TrainState) -> None:
        skipped = set().union(*all_gather_object(sorted(batches.skipped)))  # every rank's, counted once
        step_dir = save_checkpoint(
            engine,
            checkpoints,
            s.step,
            bert_config=bert_config,
            run_config=cfg,
            tokenizer=tokenizer,
            trainer_state={
                "tokens": s.tokens,
                "world_size": dist.world_size,
                "zero_stage": cfg.engine.zero_stage,
                "data": {**batches.position(), "skipped_shards": sorted(skipped)},
            },
            keep_last=cfg.checkpoint.keep_last,
        )
        name = f"{cfg.mlflow.run_name or 'pretrain'}-step{s.step}"
        model_id = tracker.log_model(step_dir, name=name, step=s.step, params={"tokens": s.tokens})
        if model_id is not None:
            final_model[:] = [(model_id, step_dir)]

    stream = _seeded(batches, cfg.seed)
    if cfg.debug.stall_at_step is not None and dist.rank == cfg.debug.stall_rank:
        stream = _stall(stream, (cfg.debug.stall_at_step - 1) * cfg.engine.gradient_accumulation_steps)
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
            stream,
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
            preemption=preemption,
            watchdog=StepWatchdog(cfg.engine.collective_timeout_s, dist.rank),
        )
        if state.preempted:
            if not (cfg.checkpoint.save_every and state.step % cfg.checkpoint.save_every == 0):
                save(state)
            log.warning(
                "preempted (signal %s): checkpoint of step %d written; exiting", preemption.signal, state.step
            )
            status = "KILLED"
            raise Preempted()
        if cfg.debug.exit_after_step is not None and state.step >= cfg.debug.exit_after_step:
            log.warning("debug.exit_after_step=%d: exiting without cleanup", state.step)
            os._exit(17)  # what a crash looks like: no final save, no tracker close
        if cfg.data.on_corrupt_shard == "skip":  # collective: counted over the whole run, all ranks
            skipped = set().union(*all_gather_object(sorted(batches.skipped)))
            tracker.log_metrics(state.step, {"skipped_shards": len(skipped)})
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
        tracker.log_metrics(state.step, {"tokens_seen": state.tokens})
        if dist.rank == 0 and cfg.mlflow.register and final_model:
            register_final(tracker, *final_model[0], cfg.mlflow.register)
        status = "FINISHED"
    finally:
        if dist.rank == 0:
            for artifact in ("config.yaml", "ds_config.json", "metrics.jsonl"):
                tracker.log_artifact(output_dir / artifact)
            latest = checkpoints / LATEST
            if latest.is_file():
                tracker.log_artifact(checkpoints / latest.read_text().strip() / CONFIG)
        tracker.close(status)
        if monitor is not None:
            monitor.finish()
    return state
