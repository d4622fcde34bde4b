"""find_resume and elastic resume: which step dir a run resumes from, and what another world size needs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers.checkpoints import tiny_bert_config, write_step_dir

from bertscale.errors import CheckpointError
from bertscale.model import BertForPreTraining
from bertscale.model_dir import DEEPSPEED
from bertscale.pretrain.checkpoint import check_parameter_names, find_resume


def test_find_resume(tmp_path):
    assert find_resume("auto", tmp_path / "fresh") is None
    assert find_resume("never", tmp_path) is None
    step_dir = write_step_dir(tmp_path, BertForPreTraining(tiny_bert_config()))
    for resume, output_dir in (("auto", tmp_path), (str(tmp_path), tmp_path / "other")):
        with pytest.raises(CheckpointError, match=rf"{step_dir}: no deepspeed/ engine state"):
            find_resume(resume, output_dir)
    (step_dir / "deepspeed").mkdir()
    assert find_resume("auto", tmp_path) == step_dir
    assert find_resume(str(tmp_path / "checkpoints"), tmp_path / "other") == step_dir


# --- elastic resume: what a checkpoint from another world size / ZeRO stage needs ------------------


def _saved(world_size: int = 2, zero_stage: int = 2, lanes: int = 2, micro_batch_size: int = 8) -> dict:
    data = {"micro_batch_size": micro_batch_size, "lanes": lanes, "seed": 1, "masking": "dynamic"}
    return {"step": 4, "world_size": world_size, "zero_stage": zero_stage, "data": data}


def test_another_world_size_or_zero_stage_needs_a_universal_checkpoint():
    from bertscale.pretrain.checkpoint import needs_universal

    assert not needs_universal(_saved(2, 2), world_size=2, zero_stage=2)
    assert needs_universal(_saved(2, 2), world_size=1, zero_stage=2)
    assert needs_universal(_saved(2, 2), world_size=2, zero_stage=3)
    assert not needs_universal(_saved(2, 0), world_size=4, zero_stage=0)  # nothing partitioned
    with pytest.raises(CheckpointError, match="ZeRO stage 0 and stages 1-3 do not convert"):
        needs_universal(_saved(2, 0), world_size=2, zero_stage=1)


def test_resume_on_fewer_ranks_keeps_the_global_batch_by_accumulating():
    from bertscale.errors import ConfigError
    from bertscale.pretrain.config import load_pretrain_config
    from bertscale.pretrain.train import plan_resume

    cfg = load_pretrain_config(None, ["data.micro_batch_size=8", "data.masking=dynamic", "seed=1"])
    plan_resume(cfg, _saved(world_size=4, lanes=4), world_size=1)
    assert cfg.engine.gradient_accumulation_steps == 4
    plan_resume(cfg, _saved(world_size=1, lanes=4), world_size=2)
    assert cfg.engine.gradient_accumulation_steps == 2
    with pytest.raises(ConfigError, match="4 micro batches, which 3 ranks cannot split evenly"):
        plan_resume(cfg, _saved(lanes=4), world_size=3)
    with pytest.raises(ConfigError, match=r"data\.micro_batch_size=4, config has 8"):
        plan_resume(cfg, _saved(micro_batch_size=4), world_size=2)


def test_a_checkpoint_saved_for_other_parameters_is_one_line(tmp_path):
    """DeepSpeed's model states name the parameters its optimizer state is laid out for; a checkpoint
    from before query/key/value were fused (old names) is refused by name before DeepSpeed reads it."""
    engine = SimpleNamespace(module=BertForPreTraining(tiny_bert_config()))
    names = [name for name, _ in engine.module.named_parameters()]
    step_dir = tmp_path / "step_00000004"
    states = step_dir / DEEPSPEED / step_dir.name / "mp_rank_00_model_states.pt"
    states.parent.mkdir(parents=True)
    torch.save({"param_shapes": [dict.fromkeys(names, torch.Size([1]))]}, states)
    check_parameter_names(engine, step_dir)  # saved by this model: passes
    old = [n.replace("self.qkv.", "self.query.") for n in names]
    torch.save({"param_shapes": [dict.fromkeys(old, torch.Size([1]))]}, states)
    fused = 2 * engine.module.config.num_hidden_layers  # each layer's qkv weight and bias
    with pytest.raises(CheckpointError, match=r"^.*step_00000004: its optimizer state is for parameters this "
                       rf"model does not have \(bert\.encoder\.layer\.0\.attention\.self\.query\.bias, {fused} in all"):
        check_parameter_names(engine, step_dir)
