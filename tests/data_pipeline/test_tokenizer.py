"""SentencePiece training/loading: special tokens at the contract's ids, bad models rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertscale.data_pipeline.config import TokenizerConfig
from bertscale.data_pipeline.schema import SPECIAL_TOKENS
from bertscale.data_pipeline.sources import clean_document, read_book
from bertscale.data_pipeline.tokenizer import (
    load_tokenizer_model,
    processor,
    train_tokenizer,
    word_start_table,
)
from bertscale.errors import DataError

NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
BOOK = Path(__file__).parents[1] / "assets" / "books" / "hamlet_act1.txt"


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return clean_document(read_book(str(BOOK)), 8).sentences


def test_trained_model_has_special_tokens_first(sentences: list[str]) -> None:
    model = train_tokenizer(sentences, TokenizerConfig(vocab_size=300), seed=0)
    sp = processor(model)
    assert tuple(sp.id_to_piece(i) for i in range(NUM_SPECIAL_TOKENS)) == SPECIAL_TOKENS
    assert sp.get_piece_size() == 300
    ids = sp.encode("[CLS] [MASK] the king", out_type=int)
    assert not set(ids) & {0, 2, 3, 4}  # control symbols never come out of text
    assert train_tokenizer(sentences, TokenizerConfig(vocab_size=300), seed=0) == model  # reproducible
    starts = word_start_table(sp)
    assert starts[sp.piece_to_id("\u2581the")] and starts.shape == (300,)


def test_small_corpus_gives_a_smaller_vocabulary(sentences: list[str]) -> None:
    sp = processor(train_tokenizer(sentences[:20], TokenizerConfig(vocab_size=5000), seed=0))
    assert NUM_SPECIAL_TOKENS < sp.get_piece_size() < 5000


def test_sentence_sample_is_seeded(sentences: list[str]) -> None:
    cfg = TokenizerConfig(vocab_size=200, input_sentence_size=100)
    assert train_tokenizer(sentences, cfg, seed=1) == train_tokenizer(sentences, cfg, seed=1)
    assert train_tokenizer(sentences, cfg, seed=1) != train_tokenizer(sentences, cfg, seed=2)


def test_load_rejects_missing_and_foreign_models(tmp_path: Path, sentences: list[str]) -> None:
    with pytest.raises(DataError, match="tokenizer model not found"):
        load_tokenizer_model(tmp_path / "none.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk.model: not a SentencePiece model"):
        load_tokenizer_model(junk)
    import sentencepiece as spm

    plain = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(plain), vocab_size=200, minloglevel=2
    )
    with pytest.raises(DataError, match=r"plain.model: ids 0-4 must be \['\[PAD\]'"):
        load_tokenizer_model(f"{plain}.model")
