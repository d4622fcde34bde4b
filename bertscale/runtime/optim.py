"""Optimizer and learning-rate schedule (shared by pretraining and fine-tuning).

Public API:
    param_groups(model, weight_decay, lr, lr_scale=None)   no decay for biases and LayerNorm weights;
                                                 parameters named in lr_scale train at lr x their scale
    build_optimizer(model, cfg: OptimizerConfig, lr_scale=None)  torch AdamW (fused on CUDA and CPU) or LAMB
    lr_lambda(cfg: ScheduleConfig, max_steps)    step -> multiplier: linear warmup, then decay
    BudgetLR(optimizer, cfg, budget_samples, samples_per_step)
                                                 warmup in steps, then decay to the end of a sample budget
    build_scheduler(optimizer, cfg, max_steps, budget_samples=None, samples_per_step=None)
                                                 LambdaLR or BudgetLR (their state is saved in checkpoints)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from bertscale.runtime.config import OptimizerConfig, ScheduleConfig

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")
FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch 2.13 has a fused AdamW kernel that we test or use


def param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, lr_scale: Mapping[str, float] | None = None
) -> list[dict]:
    """[decay, no_decay] groups, then one group per (decay, scale) of the parameters in ``lr_scale``
    (e.g. fresh MLM heads on a pretrained encoder), whose ``lr`` is ``lr`` x scale; schedules
    multiply every group's rate alike. Without ``lr_scale``: the two groups checkpoints hold."""
    scales = {name: scale for name, scale in (lr_scale or {}).items() if scale != 1.0}
    base: dict[bool, list] = {True: [], False: []}
    scaled: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():  # tied parameters appear once
        if param.requires_grad:
            decay = not name.endswith(NO_DECAY)
            (scaled.setdefault((decay, scales[name]), []) if name in scales else base[decay]).append(param)
    groups = [{"params": base[True], "weight_decay": weight_decay}, {"params": base[False], "weight_decay": 0.0}]
    if scaled and lr is None:
        raise ValueError("param_groups: lr_scale needs the base lr")
    for (decay, scale), params in scaled.items():
        groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale})
    return groups


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): Adam's update rescaled per parameter by ||w|| / ||update||."""

    def __init__(
        self, params: Iterable, lr: float, betas: tuple[float, float], eps: float, weight_decay: float
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable | None = None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                grad = p.grad.float()
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                update = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * p.float()
                w_norm, u_norm = p.float().norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, lr_scale: Mapping[str, float] | None = None
) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, lr_scale)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    # torch's fused kernel updates every tensor in one call (one launch on a GPU; on CPU 8x faster
    # than the per-tensor foreach path for a 4-layer BERT, see benchmarks/README.md)
    fused = all(p.device.type in FUSED_ADAMW_DEVICES for g in groups for p in g["params"]) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def _decayed(cfg: ScheduleConfig, progress: float) -> float:
    """The multiplier after warmup, at ``progress`` in [0, 1] of the decay."""
    if cfg.decay == "constant":
        return 1.0
    progress = min(1.0, max(0.0, progress))
    shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def lr_lambda(cfg: ScheduleConfig, max_steps: int) -> Callable[[int], float]:
    total = cfg.total_steps or max_steps

    def multiplier(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if total <= cfg.warmup_steps:
            return 1.0
        return _decayed(cfg, (step - cfg.warmup_steps) / (total - cfg.warmup_steps))

    return multiplier


class BudgetLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup over ``cfg.warmup_steps`` steps, then decay that ends when ``budget_samples`` are used.

    Progress after warmup is counted in samples, not steps, and the count is checkpointed: a run
    resumed with another global batch (world size, accumulation) still ends its decay at the same
    sample, and so at the same token budget. The budget and samples per step are this run's
    (config), the position is the checkpoint's.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        budget_samples: int,
        samples_per_step: int,
    ):
        if budget_samples <= cfg.warmup_steps * samples_per_step:
            raise ValueError(
                f"a budget of {budget_samples} samples ends before the {cfg.warmup_steps} warmup steps "
                f"({cfg.warmup_steps * samples_per_step} samples at {samples_per_step} per step)"
            )
        self.cfg, self.budget_samples, self.samples_per_step = cfg, budget_samples, samples_per_step
        self.samples = 0  # consumed before the step whose lr get_lr() gives
        self.warmup_end = 0 if cfg.warmup_steps == 0 else None  # samples when warmup ended
        super().__init__(optimizer)

    def multiplier(self) -> float:
        if self.warmup_end is None:  # still warming up: self.last_epoch < warmup_steps
            return (self.last_epoch + 1) / self.cfg.warmup_steps
        return _decayed(self.cfg, (self.samples - self.warmup_end) / (self.budget_samples - self.warmup_end))

    def get_lr(self) -> list[float]:
        return [base * self.multiplier() for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:  # epoch: torch's signature, unused
        if self.last_epoch >= 0:  # not the call LRScheduler.__init__ makes
            self.samples += self.samples_per_step
            if self.warmup_end is None and self.last_epoch + 1 >= self.cfg.warmup_steps:
                self.warmup_end = self.samples
        super().step()

    def steps_left(self) -> int:
        """Optimizer steps until the budget is used up (0 when it is)."""
        return max(0, -(-(self.budget_samples - self.samples) // self.samples_per_step))

    def state_dict(self) -> dict:
        keys = ("last_epoch", "samples", "warmup_end", "base_lrs", "budget_samples")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch, self.samples = state_dict["last_epoch"], state_dict["samples"]
        self.warmup_end, self.base_lrs = state_dict["warmup_end"], state_dict["base_lrs"]
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr  # this run's budget may differ from the checkpoint's


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    max_steps: int,
    budget_samples: int | None = None,
    samples_per_step: int | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    if budget_samples is not None:
        return BudgetLR(optimizer, cfg, budget_samples, samples_per_step or 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, max_steps))
