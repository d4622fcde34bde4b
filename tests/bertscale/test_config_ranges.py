"""Every numeric config value is range-checked at load (one line naming the key); overriding one
key of a section keeps that section's other defaults."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from bertscale.config import describe, load_config
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.errors import ConfigError
from bertscale.finetune.config import FinetuneConfig
from bertscale.model import BertConfig
from bertscale.pretrain.config import PretrainConfig

REPO = Path(__file__).parents[2]
FT = ["model.checkpoint=x"]


@pytest.mark.parametrize(
    ("cls", "override", "key"),
    [
        (PipelineConfig, "pairs.max_seq_length=40000", "pairs.max_seq_length"),  # > int16 positions
        (PipelineConfig, "tokenizer.vocab_size=3", "tokenizer.vocab_size"),
        (PipelineConfig, "tokenizer.character_coverage=1.5", "tokenizer.character_coverage"),
        (PipelineConfig, "tokenizer.character_coverage=0", "tokenizer.character_coverage"),
        (PipelineConfig, "pairs.random_doc_pool=0", "pairs.random_doc_pool"),
        (PipelineConfig, "seed=-1", "seed"),
        (PipelineConfig, "inputs.max_documents=0", "inputs.max_documents"),
        (PretrainConfig, "optimizer.lr=-1e-4", "optimizer.lr"),
        (PretrainConfig, "optimizer.lr=.nan", "optimizer.lr"),
        (PretrainConfig, "optimizer.betas=[0.9, 1.0]", "optimizer.betas"),
        (PretrainConfig, "model.hidden_dropout_prob=1.0", "model.hidden_dropout_prob"),
        (PretrainConfig, "model.attention_probs_dropout_prob=-0.1", "model.attention_probs_dropout_prob"),
        (PretrainConfig, "model.num_attention_heads=0", "model.num_attention_heads"),
        (PretrainConfig, "schedule.min_lr_ratio=2", "schedule.min_lr_ratio"),
        (PretrainConfig, "engine.gradient_clipping=-1", "engine.gradient_clipping"),
        (PretrainConfig, "checkpoint.keep_last=-1", "checkpoint.keep_last"),
        (PretrainConfig, "checkpoint.init_new_lr_scale=0", "checkpoint.init_new_lr_scale"),
        (PretrainConfig, "metrics.peak_tflops=0", "metrics.peak_tflops"),
        (PretrainConfig, "data.pad_to_multiple_of=0", "data.pad_to_multiple_of"),
        (FinetuneConfig, "model.classifier_dropout=1.5", "model.classifier_dropout"),
        (FinetuneConfig, "train.epochs=0", "train.epochs"),
        (FinetuneConfig, "optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
    ],
)
def test_out_of_range_values_name_the_key(cls, override, key):
    with pytest.raises(ConfigError, match=rf"^defaults \+ overrides: '{key}(\[1\])?' must be in "):
        load_config(cls, None, [*(FT if cls is FinetuneConfig else []), override])


def _sections(cls: type) -> list[type]:
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [cls, *(section for tp in nested for section in _sections(tp))]


def test_every_range_names_a_numeric_field():
    for root in (PipelineConfig, PretrainConfig, FinetuneConfig):
        for section in _sections(root):
            hints = typing.get_type_hints(section)
            for name in getattr(section, "RANGES", {}):
                kind = str(hints.get(name))
                assert "int" in kind or "float" in kind, f"{section.__name__}.RANGES: {name} ({kind})"


def test_defaults_are_in_range_and_help_shows_ranges():
    for cls in (PipelineConfig, PretrainConfig):
        load_config(cls, None, [])
    load_config(FinetuneConfig, None, FT)
    assert "optimizer.lr: float = 0.0001  in (0, inf)" in describe(PretrainConfig)
    with pytest.raises(ValueError, match=r"hidden_dropout_prob must be in \[0, 1\), got 1.0"):
        BertConfig(hidden_dropout_prob=1.0)  # transformers' config.json goes through here too


def test_overriding_one_key_keeps_the_sections_other_defaults():
    cfg = load_config(FinetuneConfig, None, [*FT, "mlflow.enabled=false", "dataset.max_examples=10"])
    assert cfg.mlflow.experiment == "bertscale-finetune" and not cfg.mlflow.enabled
    assert cfg.dataset.name == "pang_lee" and cfg.dataset.max_examples == 10
    cfg = load_config(FinetuneConfig, None, [*FT, "dataset.path=mine.csv"])  # replaces the built-in
    assert cfg.dataset.name is None and cfg.dataset.path == "mine.csv"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.path=tests/assets/finetune/ner.conll"],
         "ner.conll: conll data \\(one label per word\\) does not fit task=sequence_classification"),
        (["task=token_classification", "dataset.path=x.jsonl"],
         "x.jsonl: jsonl data \\(one label per text\\) does not fit task=token_classification"),
        (["task=token_classification"], "pang_lee: fasttext data"),
    ],
)  # fmt: skip
def test_data_of_the_wrong_kind_for_the_task_is_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(FinetuneConfig, None, [*FT, *overrides])
    load_config(FinetuneConfig, None, [*FT, "task=token_classification", "dataset.name=optimus_ner"])


@pytest.mark.integration
def test_pipeline_cli_rejects_a_sequence_length_the_shards_cannot_hold(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bertscale.data_pipeline", "pairs.max_seq_length=40000", f"output_dir={tmp_path / 'o'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.endswith("'pairs.max_seq_length' must be in [8, 32768], got 40000\n")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "o").exists()
