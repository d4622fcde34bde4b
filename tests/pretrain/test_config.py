"""Shipped configs, the generated DeepSpeed JSON, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bertscale.errors import ConfigError, run_cli
from bertscale.pretrain.__main__ import main
from bertscale.pretrain.config import PretrainConfig, load_pretrain_config
from bertscale.runtime.config import EngineConfig
from bertscale.runtime.engine import build_ds_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bertscale" / "pretrain" / "configs"


@pytest.mark.parametrize("name", ["tiny", *(f"bert_{s}_phase{p}" for s in ("base", "large") for p in (1, 2))])
def test_shipped_configs_load(name):
    cfg = load_pretrain_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, PretrainConfig)
    assert cfg.model.vocab_size is None  # taken from the shard manifest
    if name.startswith("bert_"):
        size = {"base": (768, 12, 12), "large": (1024, 24, 16)}[name.split("_")[1]]
        assert (cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.model.num_attention_heads) == size
        assert cfg.engine.precision == "bf16"
        phase2 = name.endswith("phase2")
        assert str(cfg.data.shards).endswith("seq512" if phase2 else "seq128")
        assert (
            (cfg.checkpoint.init_from == Path(f"runs/{name[:-1]}1"))
            if phase2
            else cfg.checkpoint.init_from is None
        )
    else:
        assert cfg.model.num_hidden_layers == 2 and cfg.max_steps <= 1000


def test_ds_config_is_generated_and_user_sections_override(tmp_path):
    cfg = EngineConfig(zero_stage=3, precision="bf16", gradient_accumulation_steps=4, gradient_clipping=0.5)
    ds = build_ds_config(cfg, micro_batch_size=16)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"] == {"stage": 3} and ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}}))
    cfg.ds_config = user
    assert build_ds_config(cfg, 16)["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    user.write_text("{not json")
    with pytest.raises(ConfigError, match=r"ds.json: cannot read DeepSpeed config"):
        build_ds_config(cfg, 16)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.micro_batch_size=0", r"'data.micro_batch_size' must be in \[1, inf\), got 0"),
        ("data.masked_lm_prob=1.5", r"'data.masked_lm_prob' must be in \(0, 1\), got 1.5"),
        ("data.max_predictions_per_seq=0", r"'data.max_predictions_per_seq' must be in \[1, inf\), got 0"),
        ("data.mlm_probability=0.2", "unknown key 'data.mlm_probability'"),  # one name: the pipeline's
        ("engine.zero_stage=4", "zero_stage must be 0, 1, 2 or 3"),
        ("engine.precision=fp8", "must be one of"),
        ("max_steps=0", r"'max_steps' must be in \[1, inf\), got 0"),
        ("metrics.log_every=0", r"'metrics.log_every' must be in \[1, inf\), got 0"),
        ("model.hidden_size=30", "not a multiple of num_attention_heads"),
    ],
)
def test_bad_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, [override])


def test_lamb_with_zero_is_refused():
    with pytest.raises(ConfigError, match=r"lamb needs engine\.zero_stage=0"):
        load_pretrain_config(None, ["optimizer.name=lamb", "engine.zero_stage=2"])
    assert load_pretrain_config(None, ["optimizer.name=lamb", "engine.zero_stage=0"]).optimizer.name == "lamb"


@pytest.mark.integration
def test_unknown_key_is_one_line_naming_the_file(tmp_path):
    """The real CLI: exit 2, one line on stderr, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine:\n  zero_stag: 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bertscale.pretrain", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {bad}: unknown key 'engine.zero_stag' (did you mean 'engine.zero_stage'?)"]
    assert "Traceback" not in proc.stderr


def _cli_error(capsys, argv: list[str]) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_missing_shards_and_checkpoints_are_clear_errors(capsys, tmp_path, synthetic_shards):
    missing = tmp_path / "nowhere"
    assert f"{missing}/manifest.json: manifest not found" in _cli_error(capsys, [f"data.shards={missing}"])
    common = [f"data.shards={synthetic_shards}", f"output_dir={tmp_path / 'run'}"]
    message = _cli_error(capsys, [*common, f"checkpoint.resume={missing}"])
    assert message == f"error: {missing}: checkpoint not found"
    message = _cli_error(capsys, [*common, f"checkpoint.init_from={missing}"])
    assert message == f"error: {missing}: checkpoint not found"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000042\n")
    message = _cli_error(capsys, common)  # resume=auto follows latest
    assert "checkpoints/latest: names 'step_00000042', which does not exist" in message


def test_too_small_vocab_is_refused(capsys, synthetic_shards, tmp_path):
    message = _cli_error(capsys, [f"data.shards={synthetic_shards}", "model.vocab_size=50"])
    assert "model.vocab_size 50 < the tokenizer's 96" in message and "manifest.json" in message


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="GPUs support fp16")
def test_fp16_on_cpu_is_a_config_error():
    from bertscale.model import BertConfig, BertForPreTraining
    from bertscale.runtime.config import OptimizerConfig, ScheduleConfig
    from bertscale.runtime.engine import create_engine

    model = BertForPreTraining(
        BertConfig(
            vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
        )
    )
    with pytest.raises(ConfigError, match=r"engine\.precision=fp16 is not supported .* use bf16 or fp32"):
        create_engine(model, EngineConfig(precision="fp16"), OptimizerConfig(), ScheduleConfig(), 2, 10)
