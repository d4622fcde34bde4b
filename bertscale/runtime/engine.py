"""DeepSpeed engine from our typed config (shared by pretraining and fine-tuning).

Public API:
    init_distributed() -> DistInfo        gloo on CPU, nccl on GPU; a plain ``python -m`` is rank 0 of 1
    build_ds_config(engine_cfg, micro_batch_size) -> dict    the DeepSpeed JSON, generated
    create_engine(model, engine_cfg, optimizer_cfg, schedule_cfg, micro_batch_size, max_steps,
                  budget_samples=None, lr_scale=None)
        -> deepspeed.DeepSpeedEngine     (optimizer + LR scheduler attached; their state is checkpointed;
                                          with a sample budget the scheduler is optim.BudgetLR)
    consolidated_state_dict(engine) -> state_dict   collective: full fp32 weights, any ZeRO stage
    barrier(), all_reduce_sum(values) -> list[float], all_gather_object(obj) -> list
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from torch import nn

from bertscale.errors import ConfigError
from bertscale.model import hf_state_dict
from bertscale.ports import free_port
from bertscale.runtime.config import EngineConfig, OptimizerConfig, ScheduleConfig
from bertscale.runtime.optim import build_optimizer, build_scheduler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(timeout_s: float = 0) -> DistInfo:
    """Join the process group the launcher describes in the environment (or make a group of one).

    ``timeout_s`` > 0 bounds every collective (a backstop: the loop's StepWatchdog fires first).
    """
    for key, default in (
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, default)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        if "OMP_NUM_THREADS" not in os.environ:  # ranks on one host share its cores
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        kwargs = {"timeout": timedelta(seconds=2 * timeout_s)} if timeout_s > 0 else {}
        deepspeed.init_distributed(dist_backend=backend, verbose=False, **kwargs)
        if device.type == "cpu" and world_size > 1 and os.environ.get("LOCAL_SIZE") == str(world_size):
            _unlink_shm_workspace(rank)  # DeepSpeed's test for its shared-memory allreduce: all ranks local
    return DistInfo(rank, world_size, local_rank, device)


def shm_workspace(rank: int) -> Path:
    """The /dev/shm segment DeepSpeed's CPU allreduce creates for ``rank`` of the group in the environment."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def _unlink_shm_workspace(rank: int) -> None:
    """DeepSpeed's CPU allreduce maps one ~69 MB /dev/shm segment per rank and never unlinks it: each
    run kept ~138 MB of RAM until reboot (9 GB after a day of test runs here). Every rank has mapped
    every segment when init returns; after a barrier each unlinks its own name. The mappings live on
    until the process exits, however it exits, so a killed rank leaks nothing either."""
    dist.barrier()
    shm_workspace(rank).unlink(missing_ok=True)


def build_ds_config(cfg: EngineConfig, micro_batch_size: int, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON; sections of ``cfg.ds_config`` (a user JSON file) replace ours.

    ``load_universal``: the engine will load a universal checkpoint (another world size or ZeRO stage).
    """
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.gradient_clipping,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # our optimizers are plain torch ones
        "steps_per_print": 2**31 - 1,  # we log ourselves (metrics.py)
        "wall_clock_breakdown": False,
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if cfg.ds_config is not None:
        try:
            user = json.loads(cfg.ds_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{cfg.ds_config}: cannot read DeepSpeed config ({err})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{cfg.ds_config}: a DeepSpeed config must be a JSON object")
        ds.update(user)
    return ds


def create_engine(
    model: nn.Module,
    engine_cfg: EngineConfig,
    optimizer_cfg: OptimizerConfig,
    schedule_cfg: ScheduleConfig,
    micro_batch_size: int,
    max_steps: int,
    budget_samples: int | None = None,
    load_universal: bool = False,
    lr_scale: dict[str, float] | None = None,
) -> deepspeed.DeepSpeedEngine:
    """Wrap ``model`` (built identically on every rank) with optimizer, schedule, ZeRO and precision.

    ``lr_scale``: parameter name -> multiplier of the lr (bertscale.runtime.optim.param_groups).
    """
    accelerator = get_accelerator()
    supported = {
        "fp16": accelerator.is_fp16_supported(),
        "bf16": accelerator.is_bf16_supported(),
        "fp32": True,
    }
    if not supported[engine_cfg.precision]:
        raise ConfigError(
            f"engine.precision={engine_cfg.precision} is not supported by DeepSpeed's "
            f"'{accelerator.device_name()}' accelerator; use {'bf16 or ' if supported['bf16'] else ''}fp32"
        )
    if engine_cfg.activation_checkpointing:
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
    if accelerator.device_name() == "cuda":  # on the device first, so AdamW can use its fused kernel
        model.to(accelerator.current_device_name())
    optimizer = build_optimizer(model, optimizer_cfg, lr_scale)
    world = dist.get_world_size() if dist.is_initialized() else 1
    samples_per_step = micro_batch_size * engine_cfg.gradient_accumulation_steps * world
    scheduler = build_scheduler(optimizer, schedule_cfg, max_steps, budget_samples, samples_per_step)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=build_ds_config(engine_cfg, micro_batch_size, load_universal),
    )
    return engine


def consolidated_state_dict(engine: deepspeed.DeepSpeedEngine) -> dict[str, torch.Tensor]:
    """The module's full fp32 weights on every rank: collective, every rank calls it.

    Under ZeRO (any stage) and bf16/fp16 these are the optimizer's fp32 master weights, gathered
    from the ranks' partitions; otherwise the parameters themselves. The one way a job turns its
    engine into weights for a model directory.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    full: dict[int, torch.Tensor] = {}  # by parameter: tied weights are gathered once
    for param in module.parameters():  # the same order on every rank: one collective each
        master = safe_get_full_fp32_param(param)
        full[id(param)] = (param if master is None else master).detach().to("cpu", torch.float32, copy=True)
    # parameter names -> the state_dict's HuggingFace keys (the fused qkv becomes query/key/value)
    weights = hf_state_dict({name: full[id(p)] for name, p in module.named_parameters(remove_duplicate=False)})
    return {
        key: weights[key] if key in weights else value.detach().to("cpu", copy=True)  # else a buffer
        for key, value in module.state_dict().items()
    }


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float | torch.Tensor], device: torch.device) -> list[float]:
    """Sum over ranks of each value (Python numbers or 0-d tensors); one collective, one host sync."""
    tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
