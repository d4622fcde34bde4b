"""Checkpoints in and out of fine-tuning.

In: a pretrain checkpoint (run dir, step dir or ZeRO-sharded DeepSpeed dir, read by
``bertscale.model_dir.load_pretrained``) gives the encoder's config, its ``bert.*`` weights and the
tokenizer; ``init=random`` keeps the config and tokenizer but not the weights.

Out: a fine-tuned model directory (bertscale.model_dir's layout), written atomically::

    model.safetensors   keys of transformers' BertForSequenceClassification / BertForTokenClassification
    bert_config.json    BertConfig.to_hf_dict()
    tokenizer.model     the tokenizer the task text was tokenised with
    head.json           task, architecture, num_labels, id2label, classifier_dropout
    config.yaml         the resolved FinetuneConfig
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bertscale.atomic import atomic_directory
from bertscale.config import save_config
from bertscale.errors import CheckpointError, ConfigError
from bertscale.finetune.config import FinetuneModelConfig
from bertscale.finetune.data import load_tokenizer
from bertscale.finetune.heads import HEADS
from bertscale.model import BertConfig
from bertscale.model_dir import Tokenizer, load_pretrained, read_model_dir, write_model_dir

HEAD_FILE = "head.json"
ARCHITECTURES = {
    "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
}


@dataclass
class BaseModel:
    """What fine-tuning starts from."""

    config: BertConfig
    tokenizer: Tokenizer
    weights: dict[str, torch.Tensor] | None  # None: random init
    source: str  # for messages and run params


def load_base(cfg: FinetuneModelConfig) -> BaseModel:
    """Resolve ``cfg`` to a BertConfig, tokenizer and (for init=pretrained) the weights."""
    if cfg.checkpoint is None:
        if cfg.tokenizer is None:
            raise ConfigError("model.tokenizer is required when there is no model.checkpoint")
        tokenizer = Tokenizer.from_path(cfg.tokenizer)
        values = {"vocab_size": load_tokenizer(tokenizer.path).get_piece_size(), **cfg.config}
        try:
            config = BertConfig(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.config: {err}") from None
        return BaseModel(config, tokenizer, None, "random init")

    pretrained = load_pretrained(cfg.checkpoint)
    config = pretrained.config
    if cfg.config:
        try:
            config = dataclasses.replace(config, **cfg.config)  # e.g. dropout; shapes must still match
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.config: {err}") from None
    tokenizer = Tokenizer.from_path(cfg.tokenizer) if cfg.tokenizer else pretrained.tokenizer
    if tokenizer is None:
        raise CheckpointError(
            f"{cfg.checkpoint}: no tokenizer found with the checkpoint ({pretrained.step_dir}); set model.tokenizer"
        )
    weights = pretrained.state_dict if cfg.init == "pretrained" else None
    return BaseModel(config, tokenizer, weights, f"{cfg.init} ({cfg.checkpoint})")


def init_encoder(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy the checkpoint's ``bert.*`` tensors into the head; only ``classifier.*`` stays new.

    The pretraining heads (``cls.*``) are dropped; so is the pooler for token classification.
    """
    own = model.state_dict()
    encoder = {k: v for k, v in weights.items() if k.startswith("bert.") and k in own}
    missing = [k for k in own if k.startswith("bert.") and k not in encoder]
    if missing:
        raise CheckpointError(f"{source}: lacks {len(missing)} encoder tensors, e.g. {missing[:3]}")
    for key, tensor in encoder.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model {tuple(own[key].shape)}"
            )
    model.load_state_dict(encoder, strict=False)


def save_finetuned(
    directory: Path,
    state_dict: dict[str, torch.Tensor],
    config: BertConfig,
    head: dict[str, Any],
    tokenizer: Tokenizer,
    run_config: Any,
) -> None:
    """``state_dict``: fp32 weights (runtime.engine.consolidated_state_dict)."""
    with atomic_directory(directory) as tmp:
        write_model_dir(tmp, config, state_dict, tokenizer)
        (tmp / HEAD_FILE).write_text(json.dumps(head, indent=2) + "\n")
        save_config(run_config, tmp / "config.yaml")


def head_info(task: str, labels: list[str], classifier_dropout: float | None) -> dict[str, Any]:
    return {
        "task": task,
        "architecture": ARCHITECTURES[task],
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "classifier_dropout": classifier_dropout,
    }


def load_finetuned(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The fine-tuned head (eval mode) and its head.json, from a directory save_finetuned wrote."""
    directory = Path(directory)
    try:
        head = json.loads((directory / HEAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: not a complete fine-tuned model ({err})") from None
    saved = read_model_dir(directory)
    model = HEADS[head["task"]](saved.config, head["num_labels"], head.get("classifier_dropout"))
    try:
        model.load_state_dict(saved.state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{directory}: model.safetensors does not match head.json ({err})") from None
    head["id2label"] = {int(k): v for k, v in head["id2label"].items()}
    return model.eval(), head
