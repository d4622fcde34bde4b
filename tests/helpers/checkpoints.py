"""Pretrain step dirs without training: a model directory (bertscale.model_dir) plus ``latest``."""

from __future__ import annotations

from pathlib import Path

from bertscale.model import BertConfig, BertForPreTraining
from bertscale.model_dir import CHECKPOINTS, LATEST, Tokenizer, save_model_dir, step_dir_name


def write_step_dir(
    run_dir: Path, model: BertForPreTraining, step: int = 5, tokenizer: Tokenizer | None = None
) -> Path:
    """``run_dir/checkpoints/step_N`` as pretraining writes it, minus the DeepSpeed state; -> step dir."""
    checkpoints = run_dir / CHECKPOINTS
    step_dir = save_model_dir(checkpoints / step_dir_name(step), model.config, model.state_dict(), tokenizer)
    (checkpoints / LATEST).write_text(step_dir.name + "\n")
    return step_dir


def tiny_bert_config(vocab_size: int = 40, **overrides: int) -> BertConfig:
    """One layer, hidden 16: a model that builds in milliseconds."""
    values = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    return BertConfig(vocab_size=vocab_size, **{**values, **overrides})
