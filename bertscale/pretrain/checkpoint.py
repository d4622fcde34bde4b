"""Checkpoints: save (all ranks), resume, and ``load_pretrained`` for fine-tuning and export.

Layout::

    {output_dir}/checkpoints/
        latest                    text: the name of the newest complete step dir
        step_{N:08d}/
            model.safetensors     consolidated fp32 weights, HF keys of BertForPreTraining (tied keys dropped)
            bert_config.json      BertConfig.to_hf_dict()
            config.yaml           the resolved run config
            tokenizer.model       copied from the shard dir (tokenizer.json for a HuggingFace tokenizer)
            trainer_state.json    step, tokens, world size, data positions per rank
            deepspeed/            DeepSpeed engine checkpoint (optimizer, scheduler, ZeRO shards;
                                  per-rank RNG states in its client_state)

A step dir is written under ``.step_{N:08d}.tmp``, renamed by rank 0 once every rank has finished,
and only then named in ``latest``: a crash mid-save never leaves ``latest`` pointing at a partial
checkpoint (tests/test_faults.py holds rank 0 in that window with ``BERTSCALE_TEST_PAUSE_IN_SAVE=N``,
which sleeps before publishing step N, and kills the job there). DeepSpeed's own files are
pickles that DeepSpeed loads with ``weights_only=False``; every DeepSpeed load here runs inside
:func:`weights_only_loading`, so only tensors, containers and three plain DeepSpeed record types
can be unpickled. ``load_pretrained`` reads safetensors whenever a step dir has them.

Public API:
    save_checkpoint(engine, checkpoints_dir, step, *, bert_config, run_config, tokenizer, trainer_state,
                    keep_last) -> Path
    find_resume(resume, output_dir) -> Path | None       auto | never | PATH -> a step dir
    load_checkpoint(engine, step_dir) -> dict            restores engine + RNG; returns trainer_state
    load_pretrained(path) -> (BertConfig, state_dict)    run dir, checkpoints/, step dir or ZeRO dir
    weights_only_loading(where)                          context: DeepSpeed's torch.load made weights-only
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertscale.atomic import atomic_write_text
from bertscale.config import save_config
from bertscale.errors import CheckpointError
from bertscale.model import TIED_WEIGHTS, BertConfig
from bertscale.runtime.engine import all_gather_object, barrier

LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d{8})$")
PAUSE_IN_SAVE = "BERTSCALE_TEST_PAUSE_IN_SAVE"  # fault tests only: a step whose save stalls before publishing

log = logging.getLogger("bertscale")


@contextlib.contextmanager
def weights_only_loading(where: str | Path) -> Iterator[None]:
    """Make DeepSpeed's ``torch.load(..., weights_only=False)`` calls weights-only while active."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    unsafe_load = torch.load

    def load(f, map_location=None, weights_only=None, **kwargs):  # weights_only is always True here
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            return unsafe_load(f, map_location=map_location, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{where}: refused by weights-only loading ({first})") from None
    finally:
        torch.load = unsafe_load


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def consolidated_state_dict(engine: Any, deepspeed_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights: ZeRO's master partitions gathered from the just-written checkpoint, else the module."""
    if engine.zero_optimization_stage() > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_loading(deepspeed_dir):
            state = get_fp32_state_dict_from_zero_checkpoint(str(deepspeed_dir), tag=tag)
    else:
        state = engine.module.state_dict()
    # safetensors refuses shared storage: tied keys are dropped (readers restore them)
    return {k: v.detach().float().contiguous().clone() for k, v in state.items() if k not in TIED_WEIGHTS}


def save_checkpoint(
    engine: Any,
    checkpoints_dir: Path,
    step: int,
    *,
    bert_config: BertConfig,
    run_config: Any,
    tokenizer: Path | None,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Collective: every rank calls it. ``trainer_state['data']`` is this rank's data position."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    name = step_dir_name(step)
    final, tmp = checkpoints_dir / name, checkpoints_dir / f".{name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir(parents=True)
    barrier()
    rng_states = all_gather_object(_rng_state())
    data_states = all_gather_object(trainer_state.get("data"))
    engine.save_checkpoint(str(tmp / "deepspeed"), tag=name, client_state={"step": step, "rng": rng_states})
    barrier()  # every rank's shards are on disk
    if rank == 0:
        save_file(
            consolidated_state_dict(engine, tmp / "deepspeed", name),
            tmp / "model.safetensors",
            {"format": "pt"},
        )
        atomic_write_text(tmp / "bert_config.json", json.dumps(bert_config.to_hf_dict(), indent=2) + "\n")
        save_config(run_config, tmp / "config.yaml")
        if tokenizer is not None and tokenizer.is_file():
            shutil.copy2(tokenizer, tmp / tokenizer.name)  # tokenizer.model or tokenizer.json
        state = {**trainer_state, "step": step, "data": data_states}
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


def _latest_step_dir(checkpoints_dir: Path) -> Path | None:
    latest = checkpoints_dir / LATEST
    if not latest.is_file():
        return None
    step_dir = checkpoints_dir / latest.read_text(encoding="utf-8").strip()
    if not step_dir.is_dir():
        raise CheckpointError(f"{latest}: names '{step_dir.name}', which does not exist")
    return step_dir


def find_resume(resume: str, output_dir: Path) -> Path | None:
    """``auto``: the latest checkpoint of this run if any; ``never``; or a path (must exist)."""
    if resume == "never":
        return None
    if resume == "auto":
        checkpoints = output_dir / "checkpoints"
        step_dir = _latest_step_dir(checkpoints) if checkpoints.is_dir() else None
        if step_dir is None:
            return None
    else:
        step_dir = resolve_step_dir(Path(resume))
    if not (step_dir / "deepspeed").is_dir():
        raise CheckpointError(f"{step_dir}: no deepspeed/ engine state to resume from (use init_from)")
    return step_dir


def load_checkpoint(engine: Any, step_dir: Path) -> dict[str, Any]:
    """Restore model, optimizer, LR scheduler and this rank's RNG; return trainer_state (own position)."""
    state_file = step_dir / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{state_file}: unreadable trainer state ({err})") from None
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(state["data"]) != world:
        raise CheckpointError(
            f"{step_dir}: saved by {len(state['data'])} ranks, resumed with {world}; "
            "resume needs the same world size (init_from loads the weights alone)"
        )
    with weights_only_loading(step_dir / "deepspeed"):
        load_path, client_state = engine.load_checkpoint(str(step_dir / "deepspeed"), tag=step_dir.name)
    if load_path is None or client_state is None:
        raise CheckpointError(f"{step_dir / 'deepspeed'}: DeepSpeed found no checkpoint '{step_dir.name}'")
    _set_rng_state(client_state["rng"][rank])
    return {**state, "data": state["data"][rank]}


# --- reading weights without an engine -----------------------------------------------------------


def resolve_step_dir(path: Path) -> Path:
    """The step dir a run dir, ``checkpoints/`` dir (both via ``latest``) or step dir stands for."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        path = path.parent
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / LATEST).is_file() and not (path / "model.safetensors").exists():
        step_dir = _latest_step_dir(path)
        if step_dir is not None and STEP_DIR.match(step_dir.name):
            return step_dir
    return path


def load_pretrained(path: str | Path) -> tuple[BertConfig, dict[str, torch.Tensor]]:
    """Config and fp32 weights (HF keys of BertForPreTraining, tied keys included) from a checkpoint."""
    given = Path(path)
    step_dir = resolve_step_dir(given)
    weights = step_dir / "model.safetensors"
    if weights.is_file():
        try:
            state = load_file(weights)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights}: corrupt safetensors file ({err})") from None
    else:
        state = _load_zero(step_dir, given)
    candidates = (step_dir, step_dir.parent, step_dir.parent.parent)  # a ZeRO dir sits in a step dir
    config_dir = next((d for d in candidates if (d / "bert_config.json").is_file()), None)
    if config_dir is None:
        raise CheckpointError(f"{given}: no bert_config.json beside the weights")
    try:
        hf = json.loads((config_dir / "bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_dir / 'bert_config.json'}: unreadable ({err})") from None
    config = BertConfig.from_hf_dict(hf, source=str(config_dir / "bert_config.json"))
    for key, source in TIED_WEIGHTS.items():
        if key not in state and source in state:
            state[key] = state[source]
    return config, state


def _load_zero(path: Path, given: Path) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed ZeRO checkpoint dir (or a step dir holding one in deepspeed/)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = None
    if (path / "deepspeed").is_dir():
        path = path / "deepspeed"
    elif any(path.glob("*model_states.pt")):  # a tag dir itself
        path, tag = path.parent, path.name
    if tag is None and not (path / LATEST).is_file():
        raise CheckpointError(f"{given}: neither model.safetensors nor a DeepSpeed checkpoint found")
    try:
        with weights_only_loading(path):
            return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    except CheckpointError:
        raise
    except Exception as err:  # DeepSpeed raises bare ValueError/FileNotFoundError/AssertionError
        raise CheckpointError(
            f"{path}: unreadable DeepSpeed ZeRO checkpoint ({type(err).__name__}: {err})"
        ) from None
