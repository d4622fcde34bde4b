"""The pipeline's tokenizers: a SentencePiece model it trains, or a HuggingFace tokenizer it is given.

A tokenizer travels as bytes (to Ray tasks, into the shard dir and checkpoints): a serialized
SentencePiece model (``tokenizer.model``; the five special tokens at ids 0-4), or a ``tokenizers``
JSON (``tokenizer.json``; e.g. a published BERT's WordPiece, with its own normalisation and its own
special ids). :func:`processor` turns either into an object with SentencePiece's interface
(``encode``, ``get_piece_size``, ``id_to_piece``), so the stages and fine-tuning do not care which.

Public API:
    train_tokenizer(sentences, cfg, seed) -> bytes          SentencePiece, special tokens at 0-4
    trained_special(vocab_size) -> SpecialTokens            the ids train_tokenizer's models have
    load_tokenizer_model(path) -> bytes                     a .model/.json file or a HF tokenizer directory
    processor(data, where) -> SentencePieceProcessor | WordPieceProcessor
    tokenizer_kind(data), tokenizer_filename(data), model_sha256(data)
    special_tokens(proc) -> SpecialTokens                   ids + what masking must leave alone
    word_start_table(proc) -> bool (V,)                     for whole-word masking
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer

from bertscale.data_pipeline.config import TokenizerConfig
from bertscale.data_pipeline.schema import (
    CLS_TOKEN,
    HF_TOKENIZER_NAME,
    MASK_TOKEN,
    PAD_TOKEN,
    SEP_TOKEN,
    SPECIAL_TOKENS,
    TOKENIZER_NAME,
    UNK_TOKEN,
    SpecialTokens,
    id_ranges,
)
from bertscale.errors import DataError

WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a new word
HF_VOCAB = "vocab.txt"  # a WordPiece vocabulary (BERT's original format), one token per line
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")  # slots a published vocabulary left empty


def trained_special(vocab_size: int) -> SpecialTokens:
    """The special ids of every model :func:`train_tokenizer` makes: the five tokens at 0-4, nothing else reserved."""
    return SpecialTokens.from_ids(dict(zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True)), vocab_size)


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
    """A SentencePiece ``.model`` or ``tokenizer.json`` file, or a HuggingFace tokenizer directory
    (``tokenizer.json`` and/or WordPiece ``vocab.txt``), validated, as the bytes the pipeline ships."""
    path = Path(path)
    if path.is_dir():
        data = _hf_directory(path)
    elif path.is_file():
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: unreadable tokenizer ({err.strerror or err})") from None
    else:
        raise DataError(f"{path}: tokenizer model not found")
    if path.is_dir() or path.suffix == ".json":  # never mistaken for a SentencePiece model
        WordPieceProcessor(data, where=str(path))
    processor(data, where=str(path))  # validates
    return data


def _hf_directory(root: Path) -> bytes:
    """tokenizer.json as it is, or one built from vocab.txt by the `tokenizers` library's BERT recipe."""
    try:
        if (root / HF_TOKENIZER_NAME).is_file():
            return (root / HF_TOKENIZER_NAME).read_bytes()
        if not (root / HF_VOCAB).is_file():
            raise DataError(f"{root}: not a tokenizer directory (no {HF_TOKENIZER_NAME} or {HF_VOCAB})")
        from tokenizers.implementations import BertWordPieceTokenizer

        vocab = (root / HF_VOCAB).read_text(encoding="utf-8").splitlines()
        settings: dict = {}
        if (root / HF_TOKENIZER_CONFIG).is_file():
            settings = json.loads((root / HF_TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        # without a config, a vocabulary with no upper-case token is an uncased one
        lowercase = settings.get("do_lower_case")
        if lowercase is None:
            lowercase = not any(t != t.lower() for t in vocab if not t.startswith("[") and t != "<unk>")
        wordpiece = BertWordPieceTokenizer(
            str(root / HF_VOCAB), lowercase=bool(lowercase), strip_accents=settings.get("strip_accents")
        )
        return wordpiece._tokenizer.to_str().encode()
    except DataError:
        raise
    except Exception as err:  # OSError, bad UTF-8/JSON, tokenizers' own exceptions: one line either way
        raise DataError(f"{root}: unreadable tokenizer directory ({type(err).__name__}: {err})") from None


def tokenizer_kind(data: bytes) -> str:
    """"sentencepiece" for a serialized model, else the tokenizers model type ("wordpiece", ...)."""
    if not data.lstrip().startswith(b"{"):
        return "sentencepiece"
    try:
        return str(json.loads(data)["model"]["type"]).lower()
    except (ValueError, KeyError, TypeError):
        return "unknown"  # WordPieceProcessor says what is wrong with it


def tokenizer_filename(data: bytes) -> str:
    return TOKENIZER_NAME if tokenizer_kind(data) == "sentencepiece" else HF_TOKENIZER_NAME


class WordPieceProcessor:
    """A ``tokenizers.Tokenizer`` behind SentencePieceProcessor's interface (no special tokens added:
    the pipeline and fine-tuning place [CLS]/[SEP] themselves)."""

    def __init__(self, data: bytes, where: str) -> None:
        try:
            self.tokenizer = Tokenizer.from_str(data.decode("utf-8"))
            model = json.loads(data).get("model", {})
        except Exception as err:  # tokenizers raises bare Exception subclasses for bad JSON
            raise DataError(f"{where}: not a tokenizers JSON ({type(err).__name__}: {err})") from None
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.prefix = model.get("continuing_subword_prefix") or "##"
        self.where = where
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.pieces = [""] * (max(vocab.values()) + 1 if vocab else 0)
        for piece, index in vocab.items():
            self.pieces[index] = piece
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise DataError(f"{where}: tokenizer lacks {', '.join(missing)} (a BERT tokenizer needs all five)")
        added = self.tokenizer.get_added_tokens_decoder()
        self.special_ids = sorted(
            {vocab[t] for t in SPECIAL_TOKENS} | {i for i, t in added.items() if t.special}
        )

    def encode(self, input: str | list[str], out_type: type = int) -> list:
        if isinstance(input, str):
            return self.tokenizer.encode(input, add_special_tokens=False).ids
        encodings = self.tokenizer.encode_batch(list(input), add_special_tokens=False)
        return [e.ids for e in encodings]

    def get_piece_size(self) -> int:
        return len(self.pieces)

    def id_to_piece(self, index: int) -> str:
        return self.pieces[index]

    def piece_to_id(self, piece: str) -> int:
        index = self.tokenizer.token_to_id(piece)
        return self.tokenizer.token_to_id(UNK_TOKEN) if index is None else index


Processor = spm.SentencePieceProcessor | WordPieceProcessor


def processor(data: bytes, where: str = "tokenizer") -> Processor:
    if tokenizer_kind(data) != "sentencepiece":
        return WordPieceProcessor(data, where)
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(data)
    except (RuntimeError, OSError) as err:
        raise DataError(f"{where}: not a SentencePiece model ({err})") from None
    found = tuple(sp.id_to_piece(i) for i in range(min(len(SPECIAL_TOKENS), sp.get_piece_size())))
    if found != SPECIAL_TOKENS:
        raise DataError(f"{where}: ids 0-4 must be {list(SPECIAL_TOKENS)}, found {list(found)}")
    return sp


def special_tokens(proc: Processor) -> SpecialTokens:
    """Special ids from the tokenizer; reserved = the special ids plus unused slots ([unusedN])."""
    size = proc.get_piece_size()
    ids = {name: proc.piece_to_id(name) for name in SPECIAL_TOKENS}
    if isinstance(proc, WordPieceProcessor):
        unused = [i for i, piece in enumerate(proc.pieces) if UNUSED.match(piece)]
        reserved = np.array([*proc.special_ids, *unused], dtype=np.int64)
    else:
        reserved = np.array([i for i in range(size) if proc.is_control(i) or proc.is_unknown(i)], np.int64)
        reserved = np.union1d(reserved, list(ids.values()))
    return SpecialTokens.from_ids(ids, size, id_ranges(reserved))


def word_start_table(proc: Processor) -> np.ndarray:
    """bool (V,): True where a piece starts a word (for whole-word masking); reserved ids count as starts."""
    size = proc.get_piece_size()
    if isinstance(proc, WordPieceProcessor):
        table = np.array([not p.startswith(proc.prefix) for p in proc.pieces])
    else:
        table = np.array([proc.id_to_piece(i).startswith(WORD_START) for i in range(size)])
    table[special_tokens(proc).is_special] = True
    return table


def model_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- for transformers users ------------------------------------------------------------------


def to_hf_tokenizer(data: bytes) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that gives our ids and frames them as BERT does ([CLS] A [SEP] B [SEP]).

    A SentencePiece model is converted by transformers' own SentencePiece converter (normaliser,
    dummy prefix, Unigram/BPE pieces as ``SentencePieceProcessor.encode`` has them); the special
    tokens become added special tokens at their ids.
    """
    proc = processor(data)
    if isinstance(proc, WordPieceProcessor):
        tokenizer = Tokenizer.from_str(proc.tokenizer.to_str())
    else:
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

        proto = import_protobuf().ModelProto()
        proto.ParseFromString(data)
        if proto.trainer_spec.model_type == 2:  # BPE: pieces by id, merges ranked from the scores
            vocab: object = {p.piece: i for i, p in enumerate(proto.pieces)}
        else:  # Unigram
            vocab = [(p.piece, p.score) for p in proto.pieces]
        tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    from tokenizers import AddedToken, processors

    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    special = special_tokens(proc)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
        pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, special.cls_id), (SEP_TOKEN, special.sep_id)],
    )
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def write_hf_tokenizer(data: bytes, directory: Path, model_max_length: int) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` (and ``vocab.txt``
    for a WordPiece) in ``directory``: ``transformers.AutoTokenizer.from_pretrained`` loads them."""
    tokenizer = to_hf_tokenizer(data)
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS, strict=True))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # reads tokenizer.json; any tokenizers model
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        **names,
    }
    tokenizer.save(str(directory / HF_TOKENIZER_NAME))
    (directory / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n", encoding="utf-8")
    proc = processor(data)
    if isinstance(proc, WordPieceProcessor):  # BERT's original format, for tools that want it
        (directory / HF_VOCAB).write_text("".join(p + "\n" for p in proc.pieces), encoding="utf-8")
