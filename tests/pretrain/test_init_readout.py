"""checkpoint.init_new_mlm_head=readout: a fresh MLM head on a published encoder starts from the
unigram prior and reads the encoder's top states through the tied word embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.shards import VOCAB_SIZE, write_shards

from bertscale.data_pipeline.schema import load_manifest, read_shard
from bertscale.errors import ConfigError
from bertscale.model import BertConfig, BertForPreTraining
from bertscale.pretrain.config import load_pretrain_config
from bertscale.pretrain.init_from import init_readout_head, token_counts

HEAD = [
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
]


def _model(vocab_size: int = VOCAB_SIZE) -> BertForPreTraining:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    return BertForPreTraining(config)


def test_token_counts_are_the_unmasked_ids_of_the_split_without_specials(tmp_path: Path):
    root = write_shards(tmp_path / "shards", {"train": 3, "validation": 1}, 8)
    manifest = load_manifest(root)
    counts = token_counts(root, manifest, "train").numpy()
    ids = np.concatenate([s.input_ids for p in manifest.shard_paths(root, "train") for s in read_shard(p)])
    expected = np.bincount(ids, minlength=manifest.vocab_size)
    special = manifest.special().is_special
    expected[special] = 0
    assert counts.shape == (manifest.vocab_size,) and counts.sum() > 0
    assert np.array_equal(counts, expected) and not counts[special].any()
    assert token_counts(root, manifest, "train", max_shards=1).sum() < counts.sum()  # a cap, not all shards


@torch.no_grad()
def test_readout_head_starts_at_the_constant_answer_and_reads_the_states():
    model = _model(VOCAB_SIZE + 4)  # a padded vocabulary: ids past the counts get the smallest prior
    counts = torch.zeros(VOCAB_SIZE, dtype=torch.int64)
    counts[7], counts[9] = 50, 10
    assert sorted(init_readout_head(model, HEAD, counts)) == sorted(HEAD[:3])
    head = model.cls.predictions
    assert torch.equal(head.transform.dense.weight, torch.eye(32)) and not head.transform.dense.bias.any()
    prior = torch.softmax(head.bias.detach().double(), 0)
    assert float(prior[7]) == pytest.approx(51 / (60 + VOCAB_SIZE + 4)) and prior[VOCAB_SIZE + 3] == prior[0]
    # a state carrying no information predicts the most frequent token: the constant answer
    assert int(head(torch.zeros(3, 32)).argmax(-1).unique()) == 7
    # a state along a word's embedding (shifted positive, where GELU is the identity and LayerNorm
    # removes the shift) predicts that word: the tied decoder reads the state directly
    embedding = model.bert.embeddings.word_embeddings.weight
    embedding.normal_(0.0, 1.0)  # a trained model's scale, not the init's 0.02
    word = embedding[20] - embedding[20].mean()
    assert int(head((word + 10)[None]).argmax(-1)) == 20


def test_readout_leaves_tensors_the_checkpoint_had():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_readout_head(model, ["cls.seq_relationship.weight"], torch.ones(VOCAB_SIZE)) == []
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_init_new_mlm_head_is_one_of_its_choices():
    assert load_pretrain_config(None, []).checkpoint.init_new_mlm_head == "random"
    assert (
        load_pretrain_config(None, ["checkpoint.init_new_mlm_head=readout"]).checkpoint.init_new_mlm_head
        == "readout"
    )
    with pytest.raises(ConfigError, match="must be one of"):
        load_pretrain_config(None, ["checkpoint.init_new_mlm_head=identity"])
