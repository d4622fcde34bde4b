"""Shared fixtures: a SentencePiece model trained (by the pipeline's own trainer) on the task texts."""

from pathlib import Path

import pytest

from bertscale.data_pipeline.config import TokenizerConfig
from bertscale.data_pipeline.tokenizer import train_tokenizer
from bertscale.finetune.readers import BUILTIN_DATASETS, read_examples


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    sentences = []
    for name in ("pang_lee", "optimus_ner"):
        spec = BUILTIN_DATASETS[name]
        for ex in read_examples(spec.locate(), spec.format, encoding=spec.encoding).examples[:300]:
            sentences.append(ex.text if hasattr(ex, "text") else " ".join(ex.words))
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    path.write_bytes(train_tokenizer(sentences, TokenizerConfig(vocab_size=400), seed=0))
    return path


TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer_path) -> Path:
    """A pretrain step dir (model directory + ``latest``): random BertForPreTraining weights."""
    import sentencepiece as spm
    import torch
    from helpers.checkpoints import write_step_dir

    from bertscale.model import BertConfig, BertForPreTraining
    from bertscale.model_dir import Tokenizer

    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer_path)).get_piece_size()
    torch.manual_seed(1234)  # not a fine-tuning seed: init=random must not rebuild these very weights
    model = BertForPreTraining(BertConfig(vocab_size=vocab, **TINY_BERT))
    run_dir = tmp_path_factory.mktemp("pretrain")
    return write_step_dir(run_dir, model, step=10, tokenizer=Tokenizer.from_path(tokenizer_path))
