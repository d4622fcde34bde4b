"""load_pretrained: the forms it accepts and clear errors for missing or corrupt checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bertscale.errors import CheckpointError
from bertscale.model import TIED_WEIGHTS, BertConfig, BertForPreTraining
from bertscale.model_dir import load_pretrained
from bertscale.pretrain.checkpoint import find_resume


def write_step_dir(root: Path, step: int = 5) -> tuple[Path, BertForPreTraining]:
    """A step dir as save_checkpoint writes it (minus the DeepSpeed state), plus ``latest``."""
    config = BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertForPreTraining(config)
    step_dir = root / "checkpoints" / f"step_{step:08d}"
    step_dir.mkdir(parents=True)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items() if k not in TIED_WEIGHTS}
    save_file(state, step_dir / "model.safetensors")
    (step_dir / "bert_config.json").write_text(json.dumps(config.to_hf_dict()))
    (root / "checkpoints" / "latest").write_text(step_dir.name + "\n")
    return step_dir, model


def test_every_path_form_gives_the_weights_with_tied_keys(tmp_path):
    step_dir, model = write_step_dir(tmp_path)
    for path in (tmp_path, tmp_path / "checkpoints", step_dir, step_dir / "model.safetensors"):
        pretrained = load_pretrained(path)
        config, weights = pretrained.config, pretrained.state_dict
        assert config.hidden_size == 16 and config.vocab_size == 40
        fresh = BertForPreTraining(config)
        fresh.load_state_dict(weights)  # strict
        for key, value in model.state_dict().items():
            assert torch.equal(weights[key], value), key
        assert weights["cls.predictions.decoder.weight"] is weights["bert.embeddings.word_embeddings.weight"]


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'absent'}: checkpoint not found"):
        load_pretrained(tmp_path / "absent")
    step_dir, _ = write_step_dir(tmp_path / "run")
    (step_dir / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt safetensors file"):
        load_pretrained(step_dir)
    (step_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor a DeepSpeed checkpoint"):
        load_pretrained(step_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=rf"{empty}: neither model.safetensors"):
        load_pretrained(empty)


def test_find_resume(tmp_path):
    assert find_resume("auto", tmp_path / "fresh") is None
    assert find_resume("never", tmp_path) is None
    step_dir, _ = write_step_dir(tmp_path)
    for resume, output_dir in (("auto", tmp_path), (str(tmp_path), tmp_path / "other")):
        with pytest.raises(CheckpointError, match=rf"{step_dir}: no deepspeed/ engine state"):
            find_resume(resume, output_dir)
    (step_dir / "deepspeed").mkdir()
    assert find_resume("auto", tmp_path) == step_dir
    assert find_resume(str(tmp_path / "checkpoints"), tmp_path / "other") == step_dir


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_a_pickled_deepspeed_checkpoint_cannot_run_code(tmp_path):
    """DeepSpeed loads its files with weights_only=False; ours routes them through weights-only."""
    _Exploit.target = str(tmp_path / "pwned")
    tag_dir = tmp_path / "zero" / "global_step1"
    tag_dir.mkdir(parents=True)
    torch.save({"module": _Exploit()}, tag_dir / "mp_rank_00_model_states.pt")
    (tmp_path / "zero" / "latest").write_text("global_step1")
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'zero'}: refused by weights-only loading"):
        load_pretrained(tmp_path / "zero")
    assert not (tmp_path / "pwned").exists()
    assert torch.load.__module__ == "torch.serialization"  # the guard is removed afterwards


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
