"""bertscale.finetune.export: our checkpoints <-> transformers directories, outputs equal elementwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from bertscale.errors import CheckpointError, ConfigError
from bertscale.finetune.export import (
    export_to_hf,
    load_hf_model,
    main,
    read_hf_checkpoint,
    save_pretrained_dir,
)
from bertscale.model import IGNORE_INDEX, TIED_WEIGHTS, BertConfig, BertForPreTraining, BertModel
from bertscale.model_dir import load_pretrained

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
TOL = dict(atol=1e-5, rtol=1e-5)  # float32; transformers runs its default (sdpa) attention


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, TINY["vocab_size"], (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = attention_mask[2, 5:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 1:4] = input_ids[:, 1:4]
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        next_sentence_label=torch.tensor([0, 1, 0]),
    )


def ours_random(seed: int = 0, vocab_size: int = TINY["vocab_size"]) -> BertForPreTraining:
    torch.manual_seed(seed)
    model = BertForPreTraining(BertConfig(**{**TINY, "vocab_size": vocab_size}))
    with torch.no_grad():  # non-trivial values everywhere, so a swapped tensor cannot go unnoticed
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def hf_random(cls=transformers.BertForPreTraining, seed: int = 0):
    torch.manual_seed(seed)
    model = cls(transformers.BertConfig(**TINY))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def assert_same_outputs(ours: BertForPreTraining, hf: transformers.BertForPreTraining) -> None:
    b = batch()
    real = b["attention_mask"].bool()
    with torch.no_grad():
        out, ref = ours(**b), hf(**b)
        full = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(full.prediction_logits[real], ref.prediction_logits[real], **TOL)
    torch.testing.assert_close(
        out.prediction_logits, ref.prediction_logits[b["labels"] != IGNORE_INDEX], **TOL
    )
    torch.testing.assert_close(out.seq_relationship_logits, ref.seq_relationship_logits, **TOL)
    torch.testing.assert_close(out.loss, ref.loss, **TOL)


def test_export_loads_in_transformers_with_equal_weights_and_outputs(tmp_path):
    ours = ours_random()
    out = export_to_hf(ours.config, ours.state_dict(), tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]

    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    hf_state = hf.state_dict()
    assert set(hf_state) == set(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(hf_state[key], value), key
    assert (
        hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    assert_same_outputs(ours, hf)

    encoder = transformers.BertModel.from_pretrained(out).eval()  # drops the heads, strips "bert."
    b = batch()
    real = b["attention_mask"].bool()
    with torch.no_grad():
        ref = encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        sequence_output, pooled_output = ours.bert(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(sequence_output[real], ref.last_hidden_state[real], **TOL)
    torch.testing.assert_close(pooled_output, ref.pooler_output, **TOL)


@pytest.mark.parametrize("format", ["safetensors", "pytorch_model.bin"])
def test_import_transformers_checkpoint_equal_outputs(tmp_path, format):
    hf = hf_random()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=format == "safetensors")
    if format != "safetensors":  # transformers 5 always writes safetensors: make the legacy file by hand
        (tmp_path / "hf" / "model.safetensors").unlink()
        torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    ours = load_hf_model(tmp_path / "hf")
    assert not ours.training
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    for key, value in hf.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert_same_outputs(ours, hf)


@pytest.mark.parametrize("pooler", [True, False])
def test_import_bare_bert_model_as_encoder(tmp_path, pooler):
    hf = hf_random(transformers.BertModel) if pooler else hf_random(transformers.BertForMaskedLM)
    hf.save_pretrained(tmp_path / "hf")
    encoder = load_hf_model(tmp_path / "hf", BertModel)
    assert (encoder.pooler is not None) == pooler
    b = batch()
    real = b["attention_mask"].bool()
    with torch.no_grad():
        reference = hf.bert if not pooler else hf
        ref = reference(b["input_ids"], b["attention_mask"], b["token_type_ids"]).last_hidden_state
        sequence_output, _ = encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    torch.testing.assert_close(sequence_output[real], ref[real], **TOL)
    with pytest.raises(CheckpointError, match="load it as BertModel" if pooler else "lacks"):
        load_hf_model(tmp_path / "hf", BertForPreTraining)


def test_cli_full_circle_ours_to_hf_to_ours(tmp_path, capsys, tokenizer_path):
    ours = ours_random(seed=3, vocab_size=400)  # the tokenizer's 400 tokens (more is refused)
    step = save_pretrained_dir(
        ours.config, ours.state_dict(), tmp_path / "run" / "checkpoints" / "step_00000005"
    )
    (step / "tokenizer.model").write_bytes(tokenizer_path.read_bytes())
    (step.parent / "latest").write_text(step.name + "\n")

    main(["--to-hf", str(tmp_path / "run"), str(tmp_path / "hf")])  # a run dir resolves to its latest step
    assert "transformers BertForPreTraining" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "README.md").is_file()
    assert_same_outputs(ours, transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval())

    main(["--from-hf", str(tmp_path / "hf"), str(tmp_path / "back")])
    back = load_pretrained(tmp_path / "back")
    config, state = back.config, back.state_dict
    assert config == ours.config
    assert set(state) == set(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(state[key], value), key
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()


def test_read_hf_checkpoint_renames_legacy_keys(tmp_path):
    hf = hf_random(transformers.BertModel)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf.state_dict().items()
    }
    legacy["embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]  # old buffer
    (tmp_path / "hf").mkdir()
    torch.save(legacy, tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf.config.to_dict()))
    _, state = read_hf_checkpoint(tmp_path / "hf")
    assert set(state) == {f"bert.{k}" for k in hf.state_dict()}
    torch.testing.assert_close(
        state["bert.embeddings.LayerNorm.weight"], hf.state_dict()["embeddings.LayerNorm.weight"]
    )


class NotAWeight:  # a pickle that weights_only loading must refuse
    pass


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda d: (d / "config.json").unlink(), CheckpointError, "no config.json"),
        (lambda d: (d / "config.json").write_text("{oops"), CheckpointError, "config.json: not valid JSON"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({**TINY, "model_type": "gpt2"})),
            ConfigError,
            "config.json: model_type is 'gpt2'",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 20),
            CheckpointError,
            "corrupt safetensors",
        ),
        (
            lambda d: (d / "config.json").write_text(json.dumps({**TINY, "hidden_size": 64})),
            CheckpointError,
            r"has shape \(120, 32\), the config gives \(120, 64\)",
        ),
        (
            lambda d: (
                (d / "model.safetensors").unlink(),
                torch.save({"x": NotAWeight()}, d / "pytorch_model.bin"),
            ),
            CheckpointError,
            "pytorch_model.bin: not a loadable weights-only state dict",
        ),
        (lambda d: (d / "model.safetensors").unlink(), CheckpointError, "no model.safetensors"),
    ],
)
def test_bad_transformers_directory_is_one_clear_error(tmp_path, damage, error, message):
    hf_random().save_pretrained(tmp_path / "hf")
    damage(tmp_path / "hf")
    with pytest.raises(error, match=message) as err:
        load_hf_model(tmp_path / "hf")
    assert str(tmp_path / "hf") in str(err.value)


def test_export_refuses_weights_that_do_not_match_the_config(tmp_path):
    ours = ours_random()
    state = {k: v for k, v in ours.state_dict().items() if k != "bert.pooler.dense.weight"}
    with pytest.raises(CheckpointError, match="lacks 1 tensors of BertForPreTraining"):
        export_to_hf(ours.config, state, tmp_path / "hf", source="ckpt")
    assert not (tmp_path / "hf").exists()
    tied_dropped = {k: v for k, v in ours.state_dict().items() if k not in TIED_WEIGHTS}
    export_to_hf(ours.config, tied_dropped, tmp_path / "hf")  # tied keys may be absent: restored


@pytest.mark.integration
def test_cli_error_is_one_line_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertscale.finetune.export",
            "--from-hf",
            str(tmp_path / "missing"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'missing'}: not a directory (expected a transformers checkpoint directory)"
    )
    assert not (tmp_path / "out").exists()


def _run_dir(tmp_path: Path) -> Path:
    ours = ours_random(seed=4)
    step = save_pretrained_dir(
        ours.config, ours.state_dict(), tmp_path / "run" / "checkpoints" / "step_00000005"
    )
    (step.parent / "latest").write_text(step.name + "\n")
    return tmp_path / "run"


def _export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertscale.finetune.export", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
@pytest.mark.integration
def test_export_onto_its_own_source_is_refused_and_deletes_nothing(tmp_path, where):
    run = _run_dir(tmp_path)
    before = _tree(tmp_path)
    out = {"same": run, "inside": run / "hf", "parent": tmp_path}[where]
    for flags in ([], ["--overwrite"]):  # not even --overwrite may replace the source
        result = _export_cli("--to-hf", str(run), str(out), *flags)
        assert result.returncode == 2, result.stderr
        relation = {"same": "is", "inside": "is inside", "parent": "contains"}[where]
        assert (
            result.stderr
            == f"error: OUT: {out} {relation} the input {run}; choose a separate output directory\n"
        )
        assert _tree(tmp_path) == before


@pytest.mark.integration
def test_export_into_a_non_empty_directory_needs_overwrite_and_keeps_other_files(tmp_path):
    run = _run_dir(tmp_path)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "config.json").write_text("{}")  # a stale export: ours to replace
    result = _export_cli("--to-hf", str(run), str(out))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: OUT: {out} is not empty (README.md, config.json); ")
    assert "--overwrite" in result.stderr and result.stderr.count("\n") == 1
    assert (out / "config.json").read_text() == "{}"
    result = _export_cli("--to-hf", str(run), str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "README.md").read_text() == "my notes"
    assert json.loads((out / "config.json").read_text())["hidden_size"] == TINY["hidden_size"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temp dirs left behind


@pytest.mark.integration
def test_export_to_a_file_or_an_uncreatable_path_is_one_line(tmp_path):
    run = _run_dir(tmp_path)
    (tmp_path / "afile").write_text("x")
    result = _export_cli("--to-hf", str(run), str(tmp_path / "afile"))
    assert result.stderr == f"error: OUT: {tmp_path / 'afile'} is a file, not a directory\n"
    result = _export_cli("--to-hf", str(run), str(tmp_path / "afile" / "hf"))
    assert (
        result.stderr
        == f"error: OUT: cannot create {tmp_path / 'afile' / 'hf'}: {tmp_path / 'afile'} is a file\n"
    )
    assert (tmp_path / "afile").read_text() == "x"
