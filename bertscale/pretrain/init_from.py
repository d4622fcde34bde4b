"""Continued pretraining: ``checkpoint.init_from`` a BERT checkpoint of ours or a transformers directory.

The checkpoint decides the architecture (vocab size, max positions, every shape); its tokenizer must
be the shards' tokenizer (same vocabulary size and special ids), checked on every rank before any
process group exists, so a mismatch is one clear line. Heads the checkpoint lacks (a published
``BertModel`` has no MLM/NSP heads, sometimes no pooler) are freshly initialised; the MLM decoder
stays tied to the word embeddings. Which tensors were new is returned for the run log and MLflow.

Public API:
    load_init(path, manifest, shards) -> Pretrained           checked against the shards, or CheckpointError
    load_init_weights(model, state_dict, source) -> list[str]  the keys that were freshly initialised
    token_counts(shards, manifest, split) -> Tensor           (V,) token counts of a split's first shards
    init_readout_head(model, new, counts) -> list[str]        a fresh MLM head that reads the encoder as is
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bertscale.data_pipeline.schema import MANIFEST_NAME, Manifest, load_shard
from bertscale.data_pipeline.tokenizer import load_tokenizer_model, processor, special_tokens
from bertscale.errors import CheckpointError, DataError
from bertscale.model import TIED_WEIGHTS, BertForPreTraining
from bertscale.model_dir import Pretrained, load_pretrained


def load_init(path: Path, manifest: Manifest, shards: Path) -> Pretrained:
    """The checkpoint at ``path`` after checking that it fits the shards' tokenizer and lengths."""
    init = load_pretrained(path)
    config, where = init.config, f"checkpoint.init_from={path}"
    shard_special = manifest.special()
    if init.tokenizer is not None:
        try:
            proc = processor(load_tokenizer_model(init.tokenizer.path), where=str(init.tokenizer.path))
        except DataError as err:
            raise CheckpointError(str(err)) from None
        own = special_tokens(proc)
        if own.vocab_size != manifest.vocab_size or own.ids != shard_special.ids:
            raise CheckpointError(
                f"{where}: its tokenizer ({init.tokenizer.path.name}: vocab {own.vocab_size}, {own.ids}) "
                f"is not "
                f"the shards' ({shards / MANIFEST_NAME}: vocab {manifest.vocab_size}, {shard_special.ids}); "
                "build the shards with the checkpoint's tokenizer (tokenizer.model_path=<its directory>)"
            )
    too_small = config.vocab_size < manifest.vocab_size
    if too_small or (init.tokenizer is None and config.vocab_size != manifest.vocab_size):
        raise CheckpointError(
            f"{where}: vocab_size {config.vocab_size} does not match the shards' tokenizer "
            f"({manifest.vocab_size} tokens, {shards / MANIFEST_NAME})"
        )
    if config.pad_token_id != shard_special.pad_id:
        raise CheckpointError(
            f"{where}: pad_token_id {config.pad_token_id} != the shards' [PAD] id {shard_special.pad_id}"
        )
    if manifest.max_seq_length > config.max_position_embeddings:
        raise CheckpointError(
            f"{where}: max_position_embeddings {config.max_position_embeddings} < the shards' "
            f"max_seq_length {manifest.max_seq_length}"
        )
    return init


def load_init_weights(
    model: BertForPreTraining, state_dict: dict[str, torch.Tensor], source: str
) -> list[str]:
    """Copy the checkpoint into ``model``; tensors it lacks keep ``model``'s fresh initialisation.

    Returns the freshly initialised keys (tied copies not counted: the decoder shares the word
    embeddings, its bias the MLM bias). Unknown or misshapen tensors are a CheckpointError.
    """
    own = model.state_dict()
    unexpected = [key for key in state_dict if key not in own]
    if unexpected:
        raise CheckpointError(
            f"{source}: {len(unexpected)} tensors BertForPreTraining does not have, e.g. {unexpected[:3]}"
        )
    for key, tensor in state_dict.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model {tuple(own[key].shape)}"
            )
    new = [key for key in own if key not in state_dict and key not in TIED_WEIGHTS]
    encoder = [key for key in new if key.startswith("bert.") and not key.startswith("bert.pooler.")]
    if encoder:  # only heads (and the pooler) may be new: a partial encoder is a broken checkpoint
        raise CheckpointError(f"{source}: lacks {len(encoder)} encoder tensors, e.g. {encoder[:3]}")
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in TIED_WEIGHTS}, strict=False)
    return new


UNIGRAM_SHARDS = 16  # a starting bias needs frequencies: a few shards estimate them


def token_counts(
    shards: Path, manifest: Manifest, split: str, max_shards: int = UNIGRAM_SHARDS
) -> torch.Tensor:
    """(V,) int64: how often each id occurs in the first ``max_shards`` shards of ``split`` (unmasked
    input ids, as the pipeline wrote them). The same shards on every rank: the same counts."""
    counts = np.zeros(manifest.vocab_size, np.int64)
    for path in manifest.shard_paths(shards, split)[:max_shards]:
        ids = load_shard(path, vocab_size=manifest.vocab_size).input_ids
        counts += np.bincount(ids, minlength=manifest.vocab_size)
    counts[manifest.special().is_special] = 0  # [CLS]/[SEP]/[PAD]... are never MLM targets
    return torch.from_numpy(counts)


@torch.no_grad()
def init_readout_head(model: BertForPreTraining, new: list[str], counts: torch.Tensor) -> list[str]:
    """``checkpoint.init_new_mlm_head=readout``: of the MLM head tensors in ``new``, the transform's
    dense becomes the identity (zero bias) and the output bias the add-one smoothed log frequency of
    ``counts`` (ids past ``counts``, padding of the vocabulary, count 0). The tied decoder then scores
    the encoder's top states against the word embeddings directly, plus the unigram prior: the head
    starts at or above the constant answer instead of at noise below it. Returns the keys it set."""
    head, done = model.cls.predictions, []
    if "cls.predictions.transform.dense.weight" in new:
        head.transform.dense.weight.copy_(torch.eye(head.transform.dense.weight.shape[0]))
        done.append("cls.predictions.transform.dense.weight")
    if "cls.predictions.transform.dense.bias" in new:
        head.transform.dense.bias.zero_()
        done.append("cls.predictions.transform.dense.bias")
    if "cls.predictions.bias" in new:
        full = torch.zeros(head.bias.shape[0], dtype=torch.float64)
        full[: min(len(counts), len(full))] = counts[: len(full)].double()
        head.bias.copy_(torch.log((full + 1) / (full + 1).sum()))
        done.append("cls.predictions.bias")
    return done
