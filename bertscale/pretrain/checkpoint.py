"""Pretraining checkpoints: save (all ranks) and resume. The model-directory part of a step dir
(weights, config, tokenizer) and how paths resolve are bertscale.model_dir's.

Layout::

    {output_dir}/checkpoints/
        latest                    text: the name of the newest complete step dir
        step_{N:08d}/             a model directory (bertscale.model_dir) plus:
            config.yaml           the resolved run config
            trainer_state.json    step, tokens, world size, ZeRO stage, data position (the same for
                                  every world size: see pretrain.data), corrupt shards skipped
            deepspeed/            DeepSpeed engine checkpoint (optimizer, scheduler, ZeRO shards;
                                  per-rank RNG states in its client_state)

A step dir is written under ``.step_{N:08d}.tmp``, renamed by rank 0 once every rank has finished,
and only then named in ``latest``: a crash mid-save never leaves ``latest`` pointing at a partial
checkpoint (tests/test_faults.py holds rank 0 in that window with ``BERTSCALE_TEST_PAUSE_IN_SAVE=N``,
which sleeps before publishing step N, and kills the job there). DeepSpeed loads run inside
``model_dir.weights_only_loading``.

Public API:
    save_checkpoint(engine, checkpoints_dir, step, *, bert_config, run_config, tokenizer, trainer_state,
                    keep_last) -> Path
    find_resume(resume, output_dir) -> Path | None       auto | never | PATH -> a step dir
    read_trainer_state(step_dir) -> dict                 step, tokens, world_size, zero_stage, data position
    needs_universal(state, world_size, zero_stage)       whether ZeRO partitions must be re-cut
    universal_checkpoint(step_dir, cache) -> Path        DeepSpeed universal form (ds_to_universal), cached
    load_checkpoint(engine, step_dir, universal) -> dict restores engine (+ RNG); returns trainer_state
    check_parameter_names(engine, step_dir)              the DeepSpeed state was saved for these parameters

Elastic resume: a checkpoint written by N ranks at ZeRO stage k resumes on M ranks at stage j
(1-3): rank 0 converts it once with DeepSpeed's ``ds_to_universal`` (every load in it weights-only)
and every rank loads its new partition of fp32 weights and optimizer state from that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bertscale.atomic import atomic_write_text
from bertscale.config import save_config
from bertscale.errors import CheckpointError
from bertscale.model import BertConfig
from bertscale.model_dir import (
    CHECKPOINTS,
    DEEPSPEED,
    LATEST,
    STEP_DIR,
    Tokenizer,
    latest_step_dir,
    resolve_step_dir,
    step_dir_name,
    weights_only_loading,
    write_model_dir,
)
from bertscale.runtime.engine import all_gather_object, barrier, consolidated_state_dict

PAUSE_IN_SAVE = "BERTSCALE_TEST_PAUSE_IN_SAVE"  # fault tests only: a step whose save stalls before publishing

log = logging.getLogger("bertscale")


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    engine: Any,
    checkpoints_dir: Path,
    step: int,
    *,
    bert_config: BertConfig,
    run_config: Any,
    tokenizer: Tokenizer | None,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it; ``trainer_state`` (the same on every rank) goes to JSON."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    name = step_dir_name(step)
    final, tmp = checkpoints_dir / name, checkpoints_dir / f".{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
    barrier()
    rng_states = all_gather_object(_rng_state())
    engine.save_checkpoint(str(tmp / DEEPSPEED), tag=name, client_state={"step": step, "rng": rng_states})
    weights = consolidated_state_dict(engine)  # collective
    barrier()  # every rank's shards are on disk
    if rank == 0:
        write_model_dir(tmp, bert_config, weights, tokenizer)
        save_config(run_config, tmp / "config.yaml")
        state = {**trainer_state, "step": step}
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2) + "\n")
        if os.environ.get(PAUSE_IN_SAVE) == str(step):  # a crash here must leave `latest` intact
            log.warning("%s=%d: pausing before publishing %s", PAUSE_IN_SAVE, step, name)
            time.sleep(3600)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        atomic_write_text(checkpoints_dir / LATEST, name + "\n")
        _prune(checkpoints_dir, keep_last, keep=name)
    barrier()
    return final


def _prune(checkpoints_dir: Path, keep_last: int, keep: str) -> None:
    if keep_last <= 0:
        return
    steps = sorted(p for p in checkpoints_dir.iterdir() if STEP_DIR.match(p.name))
    for old in steps[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def find_resume(resume: str, output_dir: Path) -> Path | None:
    """``auto``: the latest checkpoint of this run if any; ``never``; or a path (must exist)."""
    if resume == "never":
        return None
    if resume == "auto":
        checkpoints = output_dir / CHECKPOINTS
        step_dir = latest_step_dir(checkpoints) if checkpoints.is_dir() else None
        if step_dir is None:
            return None
    else:
        step_dir = resolve_step_dir(Path(resume))
    if not (step_dir / DEEPSPEED).is_dir():
        raise CheckpointError(f"{step_dir}: no deepspeed/ engine state to resume from (use init_from)")
    return step_dir


def read_trainer_state(step_dir: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a step dir: step, tokens, world_size, zero_stage, data position."""
    state_file = step_dir / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file}: unreadable trainer state ({err})") from None
    if not isinstance(state.get("data"), dict):  # written before elastic resume: one position per rank
        raise CheckpointError(f"{state_file}: data position from an older format; resume with init_from")
    return state


def needs_universal(state: dict[str, Any], world_size: int, zero_stage: int) -> bool:
    """Whether the saved ZeRO partitions must be re-cut (another world size or ZeRO stage)."""
    saved_stage = state.get("zero_stage", zero_stage)
    if (state["world_size"], saved_stage) == (world_size, zero_stage):
        return False
    if saved_stage == 0 and zero_stage == 0:  # nothing is partitioned: DeepSpeed loads it as is
        return False
    if 0 in (saved_stage, zero_stage):
        raise CheckpointError(
            f"resume: saved with engine.zero_stage={saved_stage}, this run has {zero_stage}; "
            "ZeRO stage 0 and stages 1-3 do not convert into each other (init_from loads the weights alone)"
        )
    return True


def universal_checkpoint(step_dir: Path, cache: Path) -> Path:
    """DeepSpeed's universal form of ``step_dir`` (``ds_to_universal``), made once by rank 0 under ``cache``.

    Returns the dir to pass to ``engine.load_checkpoint`` with tag ``step_dir.name``. Collective.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = cache / step_dir.name
    if rank == 0 and not (final / step_dir.name / "zero").is_dir():
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        tmp = cache / f".{step_dir.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        args = argparse.Namespace(
            input_folder=str(step_dir / DEEPSPEED / step_dir.name),
            output_folder=str(tmp / step_dir.name),
            num_extract_workers=1,  # in this process: weights-only loading covers every load
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,
        )
        log.info("converting %s to a universal checkpoint for another world size / ZeRO stage", step_dir)
        try:
            chatter = io.StringIO()  # its prints and progress bars
            with (
                weights_only_loading(step_dir / DEEPSPEED),
                contextlib.redirect_stdout(chatter),
                contextlib.redirect_stderr(chatter),
            ):
                ds_to_universal(args)
        except CheckpointError:
            raise
        except Exception as err:  # DeepSpeed raises bare AssertionError/KeyError on what it cannot convert
            raise CheckpointError(f"{step_dir}: cannot convert to a universal checkpoint ({err!r})") from None
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    barrier()
    return final


def check_parameter_names(engine: Any, step_dir: Path) -> None:
    """DeepSpeed lays optimizer state out by parameter: a checkpoint saved for parameters this model
    lacks (one from before query/key/value became the single ``qkv``) is one line, not a traceback."""
    states = step_dir / DEEPSPEED / step_dir.name / "mp_rank_00_model_states.pt"
    if not states.is_file():
        return  # DeepSpeed's own load names what is missing
    with weights_only_loading(states):
        saved = torch.load(states, map_location="cpu", mmap=True, weights_only=True)
    names = [name for group in saved.get("param_shapes") or [] for name in group]
    missing = sorted(set(names) - {name for name, _ in engine.module.named_parameters()})
    if missing:
        raise CheckpointError(
            f"{step_dir}: its optimizer state is for parameters this model does not have ({missing[0]}, "
            f"{len(missing)} in all: saved before query/key/value became one qkv parameter?); resume it with "
            f"the bertscale that wrote it, or start from its weights with checkpoint.init_from={step_dir}"
        )


def load_checkpoint(engine: Any, step_dir: Path, universal: Path | None = None) -> dict[str, Any]:
    """Restore model, optimizer, LR scheduler (and, at the same world size, this rank's RNG).

    ``universal``: the converted checkpoint (:func:`universal_checkpoint`) when the world size or
    ZeRO stage changed; the engine was then built with ``checkpoint.load_universal``.
    Returns trainer_state.
    """
    state = read_trainer_state(step_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    load_dir = universal if universal is not None else step_dir / DEEPSPEED
    with weights_only_loading(load_dir):
        load_path, client_state = engine.load_checkpoint(str(load_dir), tag=step_dir.name)
    if load_path is None or client_state is None:
        raise CheckpointError(f"{load_dir}: DeepSpeed found no checkpoint '{step_dir.name}'")
    if universal is None and len(client_state["rng"]) == state["world_size"]:
        _set_rng_state(client_state["rng"][rank])
    return state
