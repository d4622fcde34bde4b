"""bertscale.model_dir: the forms load_pretrained accepts, clear errors, weights-only DeepSpeed loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.checkpoints import tiny_bert_config, write_step_dir

from bertscale.errors import CheckpointError
from bertscale.model import BertForPreTraining
from bertscale.model_dir import Tokenizer, find_tokenizer, load_pretrained, read_model_dir, save_model_dir


def test_every_path_form_gives_the_weights_with_tied_keys(tmp_path):
    model = BertForPreTraining(tiny_bert_config())
    step_dir = write_step_dir(tmp_path, model)
    for path in (tmp_path, tmp_path / "checkpoints", step_dir, step_dir / "model.safetensors"):
        pretrained = load_pretrained(path)
        config, weights = pretrained.config, pretrained.state_dict
        assert config.hidden_size == 16 and config.vocab_size == 40
        fresh = BertForPreTraining(config)
        fresh.load_state_dict(weights)  # strict
        for key, value in model.state_dict().items():
            assert torch.equal(weights[key], value), key
        assert weights["cls.predictions.decoder.weight"] is weights["bert.embeddings.word_embeddings.weight"]


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'absent'}: checkpoint not found"):
        load_pretrained(tmp_path / "absent")
    step_dir = write_step_dir(tmp_path / "run", BertForPreTraining(tiny_bert_config()))
    (step_dir / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt safetensors file"):
        load_pretrained(step_dir)
    (step_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor a DeepSpeed checkpoint"):
        load_pretrained(step_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=rf"{empty}: neither model.safetensors"):
        load_pretrained(empty)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_a_pickled_deepspeed_checkpoint_cannot_run_code(tmp_path):
    """DeepSpeed loads its files with weights_only=False; ours routes them through weights-only."""
    _Exploit.target = str(tmp_path / "pwned")
    tag_dir = tmp_path / "zero" / "global_step1"
    tag_dir.mkdir(parents=True)
    torch.save({"module": _Exploit()}, tag_dir / "mp_rank_00_model_states.pt")
    (tmp_path / "zero" / "latest").write_text("global_step1")
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'zero'}: refused by weights-only loading"):
        load_pretrained(tmp_path / "zero")
    assert not (tmp_path / "pwned").exists()
    assert torch.load.__module__ == "torch.serialization"  # the guard is removed afterwards


def test_a_model_dir_round_trips_with_its_tokenizer_files(tmp_path):
    model = BertForPreTraining(tiny_bert_config())
    (tmp_path / "spm.model").write_bytes(b"sentencepiece bytes")
    out = save_model_dir(
        tmp_path / "model", model.config, model.state_dict(), Tokenizer.from_path(tmp_path / "spm.model")
    )
    saved = read_model_dir(out)
    assert saved.config == model.config and saved.step_dir == out
    assert saved.tokenizer == Tokenizer("sentencepiece", (out / "tokenizer.model",)) == find_tokenizer(out)
    assert saved.tokenizer.path.read_bytes() == b"sentencepiece bytes"
    assert "cls.predictions.decoder.weight" not in saved.state_dict  # tied: written once
    assert load_pretrained(out).tokenizer == saved.tokenizer
    with pytest.raises(CheckpointError, match=r"vocab\.txt: not a tokenizer this project reads"):
        Tokenizer.from_path(tmp_path / "vocab.txt")
