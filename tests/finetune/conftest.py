"""Shared fixtures: a SentencePiece model trained (by the pipeline's own trainer) on the task texts."""

from pathlib import Path

import pytest

from data_pipeline.config import TokenizerConfig
from data_pipeline.tokenizer import train_tokenizer
from finetune.readers import BUILTIN_DATASETS, read_examples


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
