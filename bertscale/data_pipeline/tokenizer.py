"""Train or load the SentencePiece model; the five special tokens sit at the schema's fixed ids."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from bertscale.data_pipeline.config import TokenizerConfig
from bertscale.data_pipeline.schema import (
    CLS_TOKEN,
    MASK_TOKEN,
    NUM_SPECIAL_TOKENS,
    PAD_TOKEN,
    SEP_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
)
from bertscale.errors import DataError

WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a new word


def train_tokenizer(sentences: Sequence[str], cfg: TokenizerConfig, seed: int) -> bytes:
    """Serialized model trained on ``sentences`` (the caller samples them; order is kept)."""
    if not sentences:
        raise DataError("no sentences to train the tokenizer on")
    keep = sample_indices(len(sentences), cfg.input_sentence_size, seed)
    if keep is not None:
        sentences = [sentences[i] for i in keep]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        pad_piece=PAD_TOKEN,
        unk_piece=UNK_TOKEN,
        control_symbols=[CLS_TOKEN, SEP_TOKEN, MASK_TOKEN],  # ids 2, 3, 4; never produced from text
        hard_vocab_limit=False,  # a small corpus yields a smaller vocabulary instead of failing
        input_sentence_size=0,  # already sampled above, deterministically
        shuffle_input_sentence=False,
        num_threads=1,  # multi-threaded EM is not bit-reproducible; training runs once anyway
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    return model.getvalue()


def sample_indices(total: int, size: int, seed: int) -> np.ndarray | None:
    """The sentences the tokenizer trains on: None (all of them) up to ``size``, else a seeded
    sample of ``size`` indices, ascending (corpus order is kept)."""
    if total <= size:
        return None
    return np.sort(np.random.default_rng([seed, 0x70C]).choice(total, size=size, replace=False))


def load_tokenizer_model(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer model not found")
    proto = path.read_bytes()
    processor(proto, where=str(path))  # validates
    return proto


def processor(model_proto: bytes, where: str = "tokenizer") -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(model_proto)
    except (RuntimeError, OSError) as err:
        raise DataError(f"{where}: not a SentencePiece model ({err})") from None
    found = tuple(sp.id_to_piece(i) for i in range(min(NUM_SPECIAL_TOKENS, sp.get_piece_size())))
    if found != SPECIAL_TOKENS:
        raise DataError(f"{where}: ids 0-4 must be {list(SPECIAL_TOKENS)}, found {list(found)}")
    return sp


def word_start_table(sp: spm.SentencePieceProcessor) -> np.ndarray:
    """bool (V,): True where a piece starts a word (for whole-word masking)."""
    table = np.array([sp.id_to_piece(i).startswith(WORD_START) for i in range(sp.get_piece_size())])
    table[:NUM_SPECIAL_TOKENS] = True
    return table


def model_sha256(model_proto: bytes) -> str:
    return hashlib.sha256(model_proto).hexdigest()
