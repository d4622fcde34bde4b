"""Checkpoints to and from HuggingFace transformers' BERT format, key for key.

    python -m bertscale.finetune.export --to-hf CKPT OUT      our pretrain checkpoint -> transformers directory
    python -m bertscale.finetune.export --from-hf HFDIR OUT   transformers BERT directory -> our step dir

A transformers directory holds ``config.json`` and ``model.safetensors``; it loads with
``transformers.BertForPreTraining.from_pretrained(OUT)`` or ``BertModel.from_pretrained(OUT)``.
CKPT is anything ``bertscale.model_dir.load_pretrained`` reads (run dir, step dir, ZeRO dir). Our
model directory (bertscale.model_dir) holds ``model.safetensors`` + ``bert_config.json`` and is
itself such a CKPT, so it can seed pretraining (``checkpoint.init_from``) or fine-tuning
(``model.checkpoint``). A tokenizer of ours found with the source is copied along (transformers' own
BERT tokenizers, WordPiece ``vocab.txt``, are not ours and are not converted).

Public API:
    export_to_hf(config, state_dict, out_dir, tokenizer=None) -> Path     tokenizer: a model_dir.Tokenizer
    read_hf_checkpoint(hf_dir) -> (BertConfig, state_dict)   (bertscale.model_dir's) BertForPreTraining keys
    check_state_dict(config, state_dict, source, cls) -> state_dict with tied keys, or CheckpointError
    load_hf_model(hf_dir, cls=BertForPreTraining) -> our BertForPreTraining or BertModel, eval mode
    save_pretrained_dir(config, state_dict, out_dir, tokenizer=None) -> Path   our model-dir layout
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from bertscale.errors import CheckpointError, run_cli
from bertscale.model import TIED_WEIGHTS, BertConfig, BertForPreTraining, BertModel
from bertscale.model_dir import (
    HF_CONFIG,
    Tokenizer,
    find_tokenizer,
    load_pretrained,
    read_hf_checkpoint,
    save_model_dir,
)

StateDict = dict[str, torch.Tensor]


# --- ours -> transformers --------------------------------------------------------------------


def export_to_hf(
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    source: str = "checkpoint",
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of a BertForPreTraining, atomically."""
    state = check_state_dict(config, state_dict, source)
    return save_model_dir(out_dir, config, state, tokenizer, config_name=HF_CONFIG)


def save_pretrained_dir(
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    source: str = "checkpoint",
) -> Path:
    """Write our model-dir layout (``bert_config.json`` + ``model.safetensors``), atomically.

    ``state_dict`` has BertForPreTraining keys; without ``cls.*`` heads it is checked as an encoder.
    """
    state = dict(state_dict)
    cls = BertForPreTraining if any(key.startswith("cls.") for key in state) else BertModel
    check_state_dict(config, _keys_for(cls, state), source, cls, **_model_kwargs(cls, state))
    return save_model_dir(out_dir, config, state, tokenizer)


# --- transformers -> ours --------------------------------------------------------------------


def load_hf_model(hf_dir: str | Path, cls: type[BertForPreTraining | BertModel] = BertForPreTraining):
    """Our ``cls`` (BertForPreTraining or BertModel) with the weights of a transformers directory."""
    config, state = read_hf_checkpoint(hf_dir)
    kwargs = _model_kwargs(cls, state)
    state = check_state_dict(config, _keys_for(cls, state), str(hf_dir), cls, **kwargs)
    model = cls(config, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- both ------------------------------------------------------------------------------------


def check_state_dict(
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    cls: type[BertForPreTraining | BertModel] = BertForPreTraining,
    **kwargs: bool,
) -> StateDict:
    """The tensors of ``cls(config, **kwargs)`` in ``state_dict``, or a CheckpointError naming the problem."""
    with torch.device("meta"):  # shapes only: no memory, no real init
        expected = cls(config, **kwargs).state_dict()
    state = dict(state_dict)
    for key, source_key in TIED_WEIGHTS.items():
        if key in expected and key not in state and source_key in state:
            state[key] = state[source_key]
    missing = [key for key in expected if key not in state]
    if missing:
        hint = (
            " (a BertModel checkpoint has no pretraining heads: load it as BertModel)"
            if all(key.startswith("cls.") for key in missing)
            else ""
        )
        raise CheckpointError(
            f"{source}: lacks {len(missing)} tensors of {cls.__name__}, e.g. {missing[:3]}{hint}"
        )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{source}: {len(unexpected)} tensors {cls.__name__} does not have, e.g. {unexpected[:3]}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, the config gives {tuple(tensor.shape)}"
            )
    return state


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.finetune.export", description=__doc__.split("\n\n")[0]
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--to-hf", metavar="CKPT", type=Path, help="our checkpoint (run, step or ZeRO dir)"
    )
    direction.add_argument("--from-hf", metavar="HFDIR", type=Path, help="a transformers BERT directory")
    parser.add_argument("out", type=Path, help="directory to write (replaced atomically if it exists)")
    args = parser.parse_args(argv)

    if args.to_hf is not None:
        source = args.to_hf
        pretrained = load_pretrained(source)
        config, state = pretrained.config, pretrained.state_dict
        out = export_to_hf(config, state, args.out, pretrained.tokenizer, str(source))
        kind = "transformers BertForPreTraining"
    else:
        source = args.from_hf
        config, state = read_hf_checkpoint(source)
        # only the directory itself: a parent's tokenizer would be unrelated
        out = save_pretrained_dir(config, state, args.out, find_tokenizer(source), str(source))
        heads = "with" if any(key.startswith("cls.") for key in state) else "WITHOUT"
        kind = f"bertscale checkpoint {heads} pretraining heads"
    params = sum(value.numel() for key, value in state.items() if key not in TIED_WEIGHTS)
    print(f"{source} -> {out}: {kind}, {params:,} parameters")


def _keys_for(cls: type[BertForPreTraining | BertModel], state: StateDict) -> StateDict:
    """BertForPreTraining keys as they are; BertModel keys without the ``bert.`` prefix and heads."""
    if cls is BertForPreTraining:
        return state
    return {key.removeprefix("bert."): value for key, value in state.items() if key.startswith("bert.")}


def _model_kwargs(cls: type[BertForPreTraining | BertModel], state: StateDict) -> dict[str, bool]:
    # encoders saved by transformers' token-level heads (BertForMaskedLM, ...) have no pooler
    return {"add_pooling_layer": "bert.pooler.dense.weight" in state} if cls is BertModel else {}


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
