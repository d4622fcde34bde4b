"""Parameter groups, LR schedules and LAMB."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bertscale.model import BertConfig, BertForPreTraining
from bertscale.runtime.config import OptimizerConfig, ScheduleConfig
from bertscale.runtime.optim import Lamb, build_optimizer, build_scheduler, lr_lambda, param_groups


def tiny_model() -> BertForPreTraining:
    return BertForPreTraining(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )


def test_no_weight_decay_for_biases_and_layernorm():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    # every trainable parameter exactly once (the tied decoder weight is the embedding)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_warmup_then_decay(decay):
    f = lr_lambda(ScheduleConfig(warmup_steps=10, decay=decay, min_lr_ratio=0.1), max_steps=110)
    assert f(0) == pytest.approx(0.1) and f(4) == pytest.approx(0.5) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    mid = 0.1 + 0.9 * (0.5 if decay == "linear" else 0.5 * (1 + math.cos(math.pi / 2)))
    assert f(60) == pytest.approx(mid)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_scheduler_drives_the_optimizer_lr():
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4, decay="linear", total_steps=8), max_steps=100)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


def test_lamb_step_matches_the_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 4))
    w0 = w.detach().clone()
    w.grad = torch.randn(5, 4)
    opt = Lamb([w], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    opt.step()
    m_hat, v_hat = w.grad, w.grad**2  # bias-corrected moments after one step
    update = m_hat / (v_hat.sqrt() + 1e-6) + 0.01 * w0
    expected = w0 - 0.1 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(w.detach(), expected)
    assert isinstance(build_optimizer(tiny_model(), OptimizerConfig(name="lamb")), Lamb)
