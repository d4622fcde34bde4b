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
    """A pretrain step dir as bertscale.pretrain.checkpoint writes it: random BertForPreTraining weights."""
    import json
    import shutil

    import sentencepiece as spm
    import torch
    from safetensors.torch import save_file

    from bertscale.model import TIED_WEIGHTS, BertConfig, BertForPreTraining

    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer_path)).get_piece_size()
    config = BertConfig(vocab_size=vocab, **TINY_BERT)
    torch.manual_seed(1234)  # not a fine-tuning seed: init=random must not rebuild these very weights
    model = BertForPreTraining(config)
    step = tmp_path_factory.mktemp("pretrain") / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in TIED_WEIGHTS}
    save_file(state, step / "model.safetensors", {"format": "pt"})
    (step / "bert_config.json").write_text(json.dumps(config.to_hf_dict()))
    shutil.copy(tokenizer_path, step / "tokenizer.model")
    (step.parent / "latest").write_text(step.name + "\n")
    return step
