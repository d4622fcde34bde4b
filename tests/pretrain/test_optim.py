"""Parameter groups, LR schedules and LAMB."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bertscale.model import BertConfig, BertForPreTraining
from bertscale.runtime.config import OptimizerConfig, ScheduleConfig
from bertscale.runtime.optim import BudgetLR, Lamb, build_optimizer, build_scheduler, lr_lambda, param_groups


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


def test_fresh_heads_train_at_a_scaled_lr_under_the_same_schedule():
    model = tiny_model()
    fresh = ["cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.seq_relationship.weight"]
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.01), dict.fromkeys(fresh, 10.0))
    assert len(opt.param_groups) == 4  # decay, no_decay, then the scaled decay / no-decay parameters
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = [sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups]
    assert sorted(by_group[2] + by_group[3]) == sorted(fresh)
    assert not set(fresh) & set(by_group[0] + by_group[1])
    assert sum(map(len, by_group)) == len(list(model.parameters()))
    decays = {n: g["weight_decay"] for g in opt.param_groups for n in (names[id(p)] for p in g["params"])}
    assert decays["cls.predictions.bias"] == 0.0 and decays["cls.seq_relationship.weight"] == 0.01
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4, decay="linear", total_steps=8), max_steps=100)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == pytest.approx([7.5e-4, 7.5e-4, 7.5e-3, 7.5e-3])
    # no scale (or a scale of 1): the two groups that checkpoints hold
    assert len(build_optimizer(model, OptimizerConfig(), dict.fromkeys(fresh, 1.0)).param_groups) == 2


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


def _budget_run(sched, opt, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_budget_schedule_warms_up_then_decays_to_zero_at_the_budget():
    opt = build_optimizer(tiny_model(), OptimizerConfig(lr=1e-3))
    cfg = ScheduleConfig(warmup_steps=4, decay="linear")
    sched = BudgetLR(opt, cfg, budget_samples=8 * 32, samples_per_step=32)  # 8 steps of 32
    assert sched.steps_left() == 8
    lrs = _budget_run(sched, opt, 8)
    # the same numbers as the step schedule ending at step 8 (test_scheduler_drives_the_optimizer_lr)
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert sched.steps_left() == 0 and opt.param_groups[0]["lr"] == 0.0


@pytest.mark.parametrize("resumed_per_step", [32, 64, 16])
def test_budget_schedule_resumed_ends_its_decay_at_the_same_sample(resumed_per_step):
    """Crash after 30 steps, resume (same or another global batch) from the checkpointed state."""
    cfg = ScheduleConfig(warmup_steps=10, decay="linear")
    budget = 100 * 32
    model = tiny_model()
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))
    whole = BudgetLR(opt, cfg, budget, 32)
    reference = _budget_run(whole, opt, 100)

    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))
    first = BudgetLR(opt, cfg, budget, 32)
    before = _budget_run(first, opt, 30)
    saved = torch.load(_roundtrip(first.state_dict(), opt.state_dict()), weights_only=True)

    opt = build_optimizer(model, OptimizerConfig(lr=1e-3))  # a fresh process: new objects
    resumed = BudgetLR(opt, cfg, budget, resumed_per_step)
    opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    left = resumed.steps_left()
    assert left == (budget - 30 * 32) // resumed_per_step  # 70 steps of 32 samples remain
    after = _budget_run(resumed, opt, left)
    assert before == pytest.approx(reference[:30])
    if resumed_per_step == 32:
        assert after == pytest.approx(reference[30:])  # bit for bit the uninterrupted schedule
    # in every case lr follows the samples used: 1 - (samples - warmup) / (budget - warmup)
    samples = 30 * 32 + resumed_per_step * torch.arange(left, dtype=torch.float64)
    expected = 1e-3 * (1 - (samples - 10 * 32) / (budget - 10 * 32))
    assert after == pytest.approx(expected.tolist())
    assert resumed.samples == budget and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


def _roundtrip(scheduler_state: dict, optimizer_state: dict):
    import io

    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler_state, "optimizer": optimizer_state}, buffer)
    buffer.seek(0)
    return buffer


def test_budget_ending_before_warmup_is_refused():
    opt = build_optimizer(tiny_model(), OptimizerConfig(lr=1e-3))
    with pytest.raises(ValueError, match="ends before the 10 warmup steps"):
        BudgetLR(opt, ScheduleConfig(warmup_steps=10), budget_samples=320, samples_per_step=32)


def test_adamw_is_fused_on_cpu_and_updates_as_the_foreach_loop_does():
    models = [tiny_model() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    before = models[0].cls.seq_relationship.weight.detach().clone()
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.1)
    fused = build_optimizer(models[0], cfg)
    assert fused.defaults["fused"] is True
    plain = torch.optim.AdamW(
        param_groups(models[1], 0.1), lr=1e-2, betas=tuple(cfg.betas), eps=cfg.eps, fused=False, foreach=True
    )
    torch.manual_seed(0)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, optimizer in zip(models, (fused, plain), strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert (models[0].cls.seq_relationship.weight - before).abs().mean() > 1e-3  # 3 steps of lr 1e-2 moved it
    on_meta = build_optimizer(tiny_model().to("meta"), OptimizerConfig())
    assert not on_meta.defaults["fused"]  # no fused kernel there: the plain loop


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adamw_fused_on_cuda():
    assert build_optimizer(tiny_model().cuda(), OptimizerConfig()).defaults["fused"] is True
