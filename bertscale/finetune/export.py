"""Checkpoints to and from HuggingFace transformers' BERT format, key for key.

    python -m bertscale.finetune.export --to-hf CKPT OUT      our pretrain checkpoint -> transformers directory
    python -m bertscale.finetune.export --from-hf HFDIR OUT   transformers BERT directory -> our step dir

A transformers directory holds ``config.json`` and ``model.safetensors``; it loads with
``transformers.BertForPreTraining.from_pretrained(OUT)`` (``AutoModelForMaskedLM``, the
``fill-mask`` pipeline) or ``BertModel.from_pretrained(OUT)``; a headless encoder (e.g. an imported
sentence encoder) exports as ``BertModel``. ``--to-hf`` also writes the tokenizer so that
``AutoTokenizer.from_pretrained(OUT)`` gives exactly our ids (a SentencePiece model is converted, a
WordPiece ``tokenizer.json`` kept), and a model card ``README.md`` (data manifest digest, steps,
tokens seen, eval metrics).
CKPT is anything ``bertscale.model_dir.load_pretrained`` reads (run dir, step dir, ZeRO dir). Our
model directory (bertscale.model_dir) holds ``model.safetensors`` + ``bert_config.json`` and is
itself such a CKPT, so it can seed pretraining (``checkpoint.init_from``) or fine-tuning
(``model.checkpoint``); ``--from-hf`` keeps a ``tokenizer.json`` found in HFDIR.

Public API:
    export_to_hf(config, state_dict, out_dir, tokenizer=None) -> Path     tokenizer: a model_dir.Tokenizer
    read_hf_checkpoint(hf_dir) -> (BertConfig, state_dict)   (bertscale.model_dir's) BertForPreTraining keys
    check_state_dict(config, state_dict, source, cls) -> state_dict with tied keys, or CheckpointError
    load_hf_model(hf_dir, cls=BertForPreTraining) -> our BertForPreTraining or BertModel, eval mode
    has_heads(state_dict) -> bool                           MLM/NSP heads present (tied copies aside)
    save_pretrained_dir(config, state_dict, out_dir, tokenizer=None) -> Path   our model-dir layout
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path

import torch

from bertscale.atomic import atomic_directory, prepare_output_dir
from bertscale.data_pipeline.tokenizer import (
    HF_TOKENIZER_CONFIG,
    HF_VOCAB,
    load_tokenizer_model,
    processor,
    write_hf_tokenizer,
)
from bertscale.errors import CheckpointError, DataError, run_cli
from bertscale.finetune.model_card import model_card
from bertscale.model import TIED_WEIGHTS, BertConfig, BertForPreTraining, BertModel
from bertscale.model_dir import (
    CONFIG,
    HF_CONFIG,
    HF_INDEX,
    HF_WEIGHTS,
    TOKENIZER_FILES,
    Tokenizer,
    check_tokenizer_fits,
    find_tokenizer,
    load_pretrained,
    read_hf_checkpoint,
    save_model_dir,
    write_model_dir,
)

StateDict = dict[str, torch.Tensor]
# what --overwrite replaces in a non-empty OUT; anything else there is kept
EXPORT_FILES = frozenset(
    {HF_CONFIG, HF_WEIGHTS, HF_INDEX, CONFIG, *chain(*TOKENIZER_FILES.values())}
    | {HF_TOKENIZER_CONFIG, HF_VOCAB, "special_tokens_map.json"}  # --to-hf's tokenizer files
)


# --- ours -> transformers --------------------------------------------------------------------


def export_to_hf(
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    tokenizer: Tokenizer | None = None,
    source: str = "checkpoint",
    card: str | None = None,
) -> Path:
    """Write a transformers directory, atomically: ``config.json`` + ``model.safetensors`` of a
    BertForPreTraining (or, for a headless encoder, of a BertModel), the tokenizer as
    ``transformers.AutoTokenizer`` loads it (same ids as ours), and ``card`` as ``README.md``."""
    state = dict(state_dict)
    heads = has_heads(state)
    cls = BertForPreTraining if heads else BertModel
    kwargs = _model_kwargs(cls, state)
    state = check_state_dict(config, _keys_for(cls, state), source, cls, **kwargs)
    data = None
    if tokenizer is not None:  # checked before anything is written
        try:
            data = load_tokenizer_model(tokenizer.path)
            tokens = processor(data, where=str(tokenizer.path)).get_piece_size()
        except DataError as err:
            raise CheckpointError(str(err)) from None
        check_tokenizer_fits(tokenizer.path, tokens, config.vocab_size)
    with atomic_directory(Path(out_dir), EXPORT_FILES.__contains__) as tmp:
        write_model_dir(tmp, config, state, None, config_name=HF_CONFIG)
        if not heads:  # transformers reads the class from here (AutoModel, pipelines)
            hf = {**config.to_hf_dict(), "architectures": ["BertModel"]}
            (tmp / HF_CONFIG).write_text(json.dumps(hf, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None and data is not None:
            write_hf_tokenizer(data, tmp, config.max_position_embeddings)
            if tokenizer.kind == "sentencepiece":  # ours as well: --from-hf brings it back unchanged
                shutil.copyfile(tokenizer.path, tmp / tokenizer.path.name)
        if card is not None and not (Path(out_dir) / "README.md").exists():  # never a user's README
            (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out_dir)


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
    cls = BertForPreTraining if has_heads(state) else BertModel
    check_state_dict(config, _keys_for(cls, state), source, cls, **_model_kwargs(cls, state))
    return save_model_dir(out_dir, config, state, tokenizer, owned=EXPORT_FILES.__contains__)


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
    parser.add_argument("out", type=Path, help="a new or empty directory to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the exported files in a non-empty OUT (others are kept)",
    )
    args = parser.parse_args(argv)
    prepare_output_dir(
        args.out,
        key="OUT",
        overwrite=args.overwrite,
        overwrite_hint="--overwrite",
        inputs=[args.to_hf if args.to_hf is not None else args.from_hf],
    )

    if args.to_hf is not None:
        source = args.to_hf
        pretrained = load_pretrained(source)
        config, state = pretrained.config, pretrained.state_dict
        card = model_card(pretrained, source)
        out = export_to_hf(config, state, args.out, pretrained.tokenizer, str(source), card)
        heads = has_heads(state)
        kind = f"transformers {'BertForPreTraining' if heads else 'BertModel (no pretraining heads)'}"
    else:
        source = args.from_hf
        config, state = read_hf_checkpoint(source)
        # only the directory itself: a parent's tokenizer would be unrelated
        out = save_pretrained_dir(config, state, args.out, find_tokenizer(source), str(source))
        heads = "with" if has_heads(state) else "WITHOUT"
        kind = f"bertscale checkpoint {heads} pretraining heads"
    params = sum(value.numel() for key, value in state.items() if key not in TIED_WEIGHTS)
    print(f"{source} -> {out}: {kind}, {params:,} parameters")


def has_heads(state: Mapping[str, torch.Tensor]) -> bool:
    """Pretraining heads of its own (a restored tied decoder copy of the embeddings is not one)."""
    return any(key.startswith("cls.") and key not in TIED_WEIGHTS for key in state)


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
