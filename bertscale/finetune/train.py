"""Fine-tuning job: checkpoint + task data -> head -> the shared DeepSpeed loop -> metrics, curves, model.

``main(cfg)`` runs on every rank (``python -m bertscale.finetune`` or ``deepspeed --module bertscale.finetune``). All
parameters train. Every rank evaluates the whole held-out split (identical numbers; ZeRO-3 needs
every rank in the forward anyway); rank 0 tracks, plots and saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from bertscale.atomic import atomic_write_text, prepare_output_dir
from bertscale.config import save_config, to_dict
from bertscale.errors import ConfigError, DataError
from bertscale.finetune.checkpoint import head_info, init_encoder, load_base, save_finetuned
from bertscale.finetune.config import FinetuneConfig
from bertscale.finetune.data import Features, eval_batches, load_task_data, load_tokenizer, train_batches
from bertscale.finetune.evaluate import evaluate
from bertscale.finetune.heads import HEADS
from bertscale.finetune.plot import plot_curves, read_curves
from bertscale.finetune.readers import BUILTIN_DATASETS
from bertscale.model_dir import check_tokenizer_fits, resolve_step_dir
from bertscale.runtime.engine import (
    consolidated_state_dict,
    create_engine,
    init_distributed,
)
from bertscale.runtime.loop import TrainState, run_training
from bertscale.runtime.tracking import job_tracker

log = logging.getLogger("bertscale")

PRIMARY_METRIC = {"sequence_classification": "accuracy", "token_classification": "f1"}


def main(cfg: FinetuneConfig) -> dict[str, float]:
    """Fine-tune; return the final held-out metrics (``eval_*`` on validation, ``test_*`` on test)."""
    rank = int(os.environ.get("RANK", "0"))  # the launcher's; init_distributed comes after input checks
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(message)s",
    )
    output_dir = prepare_output_dir(
        cfg.output_path,
        key="output_dir",
        overwrite=cfg.overwrite,
        overwrite_hint="overwrite=true",
        inputs=[
            cfg.model.checkpoint,
            cfg.model.tokenizer,
            cfg.dataset.path,
            cfg.dataset.validation_path,
            cfg.dataset.test_path,
        ],
    )
    base = load_base(cfg.model)
    tokenizer = load_tokenizer(base.tokenizer.path)
    check_tokenizer_fits(base.tokenizer.path, tokenizer.get_piece_size(), base.config.vocab_size)
    if cfg.max_seq_length > base.config.max_position_embeddings:
        raise ConfigError(
            f"max_seq_length {cfg.max_seq_length} > the model's max_position_embeddings "
            f"{base.config.max_position_embeddings}"
        )
    data = load_task_data(cfg.dataset, tokenizer, cfg.max_seq_length, cfg.seed)
    pad_id = tokenizer.special.pad_id
    log.info("data: %s; labels %s", data.counts, data.labels)
    for reason in data.skipped[:5]:
        log.warning("skipped %s", reason)

    dist = init_distributed()
    torch.manual_seed(cfg.seed)  # identical head (and, for init=random, encoder) on every rank
    model = HEADS[cfg.task](base.config, len(data.labels), cfg.model.classifier_dropout)
    if base.weights is not None:
        init_encoder(model, base.weights, base.source)
        base.weights = None  # the checkpoint's copy (with its MLM head) is no longer needed
    train = data.splits["train"]
    global_batch = cfg.train.micro_batch_size * dist.world_size * cfg.engine.gradient_accumulation_steps
    if len(train) < global_batch:
        raise DataError(f"{len(train)} training examples cannot fill one global batch of {global_batch}")
    max_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * len(train) / global_batch))
    engine = create_engine(
        model, cfg.engine, cfg.optimizer, cfg.schedule, cfg.train.micro_batch_size, max_steps
    )
    torch.manual_seed(cfg.seed + 1 + dist.rank)  # dropout differs between ranks

    def held_out(features: list[Features], prefix: str) -> dict[str, float]:
        metrics = evaluate(
            engine.module, eval_batches(features, cfg.train.micro_batch_size, pad_id), data.labels
        )
        return {f"{prefix}_{k}": v for k, v in metrics.items()}

    validation = data.splits["validation"]
    periodic = validation[: cfg.train.max_eval_examples]
    if dist.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.jsonl").unlink(missing_ok=True)  # the curves are this run's only
        save_config(cfg, output_dir / "config.yaml")
    dataset = cfg.dataset.name or cfg.dataset.path
    description = (
        f"**Fine-tuning** {cfg.task} ({', '.join(data.labels)}) on {dataset} "
        f"({len(train)} training examples, {max_steps} steps) from {base.source}."
    )
    tracker = job_tracker(cfg.mlflow, dist, output_dir=output_dir, job="finetune", description=description)
    if tracker.active:
        tracker.log_dataset(lambda: task_dataset(cfg, data.counts))
        if cfg.model.checkpoint is not None:
            source = tracker.start_from(resolve_step_dir(Path(cfg.model.checkpoint)))
            if source is not None:  # the description links the run and checkpoint it started from
                link = f"#/experiments/{source.experiment_id}/runs/{source.source_run_id}"
                tracker.set_description(f"{description}\n\nStarted from [{source.name}]({link}).")
    tracker.log_params(
        {
            **to_dict(cfg),
            "base": base.source,
            "labels": ",".join(data.labels),
            "max_steps_resolved": max_steps,
            "world_size": dist.world_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "data": data.counts,
        }
    )

    status, final = "FAILED", {}
    try:
        if periodic and cfg.train.eval_every:  # where the curve starts (eval_every=0: no curve)
            tracker.log_metrics(0, held_out(periodic, "eval"))
        state = run_training(
            engine,
            train_batches(train, cfg.train.micro_batch_size, cfg.seed, pad_id, dist.rank, dist.world_size),
            state=TrainState(),
            max_steps=max_steps,
            tracker=tracker,
            evaluate=(lambda: held_out(periodic, "eval")) if periodic else None,
            eval_every=cfg.train.eval_every,
            log_every=cfg.train.log_every,
        )
        for name, prefix in (("validation", "eval"), ("test", "test")):
            if data.splits[name]:
                final |= held_out(data.splits[name], prefix)
        # the last periodic eval may have been this very one: log each eval_* once per step
        every = cfg.train.eval_every
        repeat = bool(every) and state.step % every == 0 and len(periodic) == len(validation)
        tracker.log_metrics(state.step, {k: v for k, v in final.items() if not (repeat and k[:5] == "eval_")})
        _save(engine, cfg, base, data.labels, dist.rank)
        name = f"{cfg.mlflow.run_name or cfg.task}-final"
        model_id = tracker.log_model(
            output_dir / "model", name=name, step=state.step, params={"task": cfg.task}
        )
        if model_id is not None and cfg.mlflow.register:
            tracker.register(model_id, output_dir / "model", cfg.mlflow.register)
        if dist.rank == 0:
            atomic_write_text(output_dir / "results.json", json.dumps(final, indent=2) + "\n")
            metric = PRIMARY_METRIC[cfg.task]
            title = f"{cfg.task} on {cfg.dataset.name or cfg.dataset.path} from {base.source}"
            plot_curves(read_curves(output_dir / "metrics.jsonl"), metric, output_dir / "curves.png", title)
            for artifact in ("curves.png", "results.json", "config.yaml", "metrics.jsonl", "model/head.json"):
                tracker.log_artifact(output_dir / artifact)
            log.info("final: %s", "  ".join(f"{k} {v:.4f}" for k, v in final.items()))
        status = "FINISHED"
    finally:
        tracker.close(status)
    return final


def task_dataset(cfg: FinetuneConfig, counts: dict[str, int]):
    """The task's data files as an MLflow dataset (lineage imports mlflow: only where tracking is on)."""
    from bertscale.runtime.lineage import file_dataset

    builtin = BUILTIN_DATASETS.get(cfg.dataset.name or "")
    given = [cfg.dataset.path, cfg.dataset.validation_path, cfg.dataset.test_path]
    paths = [builtin.locate()] if builtin else [Path(p) for p in given if p]
    return file_dataset(cfg.dataset.name or paths[0].name, paths, counts)


def _save(engine, cfg: FinetuneConfig, base, labels: list[str], rank: int) -> None:
    """Collective (the fp32 weights are gathered from every rank); rank 0 writes ``{output_dir}/model``."""
    state = consolidated_state_dict(engine)
    if rank == 0:
        head = head_info(cfg.task, labels, cfg.model.classifier_dropout)
        save_finetuned(cfg.output_path / "model", state, base.config, head, base.tokenizer, cfg)
