"""Checkpoints in and out of fine-tuning.

In: a pretrain checkpoint (run dir, step dir or ZeRO-sharded DeepSpeed dir, read by
``bertscale.pretrain.checkpoint.load_pretrained``) gives the encoder's config, its ``bert.*`` weights and the
SentencePiece tokenizer; ``init=random`` keeps the config and tokenizer but not the weights.

Out: a fine-tuned model directory, written atomically::

    model.safetensors   keys of transformers' BertForSequenceClassification / BertForTokenClassification
    bert_config.json    BertConfig.to_hf_dict()
    head.json           task, architecture, num_labels, id2label, classifier_dropout
    tokenizer.model     the tokenizer the task text was tokenised with (tokenizer.json for a HF one)
    config.yaml         the resolved FinetuneConfig
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bertscale.atomic import atomic_directory
from bertscale.config import save_config
from bertscale.data_pipeline.schema import TOKENIZER_FILES
from bertscale.errors import CheckpointError, ConfigError
from bertscale.finetune.config import ModelConfig
from bertscale.finetune.data import load_tokenizer
from bertscale.finetune.heads import HEADS
from bertscale.model import BertConfig
from bertscale.pretrain.checkpoint import load_pretrained, resolve_step_dir

HEAD_FILE = "head.json"
ARCHITECTURES = {
    "sequence_classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification",
}


@dataclass
class BaseModel:
    """What fine-tuning starts from."""

    config: BertConfig
    tokenizer: Path
    weights: dict[str, torch.Tensor] | None  # None: random init
    source: str  # for messages and run params


def load_base(cfg: ModelConfig) -> BaseModel:
    """Resolve ``cfg`` to a BertConfig, tokenizer path and (for init=pretrained) the weights."""
    if cfg.checkpoint is None:
        if cfg.tokenizer is None:
            raise ConfigError("model.tokenizer is required when there is no model.checkpoint")
        values = {"vocab_size": load_tokenizer(cfg.tokenizer).get_piece_size(), **cfg.config}
        try:
            config = BertConfig(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.config: {err}") from None
        return BaseModel(config, Path(cfg.tokenizer), None, "random init")

    config, state = load_pretrained(cfg.checkpoint)
    if cfg.config:
        try:
            config = dataclasses.replace(config, **cfg.config)  # e.g. dropout; shapes must still match
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.config: {err}") from None
    tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else find_tokenizer(Path(cfg.checkpoint))
    weights = state if cfg.init == "pretrained" else None
    return BaseModel(config, tokenizer, weights, f"{cfg.init} ({cfg.checkpoint})")


def find_tokenizer(checkpoint: Path) -> Path:
    """The tokenizer (``tokenizer.model`` or ``tokenizer.json``) saved with a checkpoint (run, step or ZeRO dir)."""
    # a ZeRO dir sits inside a step dir (``step_N/deepspeed[/step_N]``), so look up from it too
    places = [resolve_step_dir(checkpoint), checkpoint, checkpoint.parent, checkpoint.parent.parent]
    for place in places:
        for name in TOKENIZER_FILES:
            if (place / name).is_file():
                return place / name
    raise CheckpointError(
        f"{checkpoint}: no {' or '.join(TOKENIZER_FILES)} found with the checkpoint; set model.tokenizer"
    )


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
    tokenizer: Path,
    run_config: Any,
) -> None:
    with atomic_directory(directory) as tmp:
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "bert_config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
        (tmp / HEAD_FILE).write_text(json.dumps(head, indent=2) + "\n")
        shutil.copy2(tokenizer, tmp / tokenizer.name)
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
        hf = json.loads((directory / "bert_config.json").read_text(encoding="utf-8"))
        weights = load_file(directory / "model.safetensors")
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{directory}: not a complete fine-tuned model ({err})") from None
    config = BertConfig.from_hf_dict(hf, source=str(directory / "bert_config.json"))
    model = HEADS[head["task"]](config, head["num_labels"], head.get("classifier_dropout"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{directory}: model.safetensors does not match head.json ({err})") from None
    head["id2label"] = {int(k): v for k, v in head["id2label"].items()}
    return model.eval(), head
