"""schedule.budget_tokens: the start-up checks (the schedule itself: test_optim.py; across a resume: test_train.py)."""

import pytest

from bertscale.data_pipeline.schema import load_manifest
from bertscale.errors import ConfigError
from bertscale.pretrain.config import load_pretrain_config
from bertscale.pretrain.train import token_budget_samples


def test_token_budget_in_samples_at_the_mean_sample_length(synthetic_shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    manifest = load_manifest(synthetic_shards)
    split = manifest.splits["train"]
    cfg = load_pretrain_config(None, [f"data.shards={synthetic_shards}", f"schedule.budget_tokens={split.tokens}"])
    assert token_budget_samples(cfg, manifest) == split.samples  # the whole split's tokens: every sample
    assert token_budget_samples(load_pretrain_config(None, []), manifest) is None


def test_budget_ending_before_warmup_is_one_line(synthetic_shards, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    manifest = load_manifest(synthetic_shards)
    split = manifest.splits["train"]
    tokens = round(10 * 16 * split.tokens / split.samples)  # 10 steps of 2 x 8 samples
    overrides = ["schedule.warmup_steps=10", "data.micro_batch_size=8", f"schedule.budget_tokens={tokens}"]
    with pytest.raises(ConfigError) as err:
        token_budget_samples(load_pretrain_config(None, overrides), manifest)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"schedule.budget_tokens={tokens} (160 samples")
    assert "ends before the 10 warmup steps (160 samples at 16 per step)" in message
    overrides[-1] = f"schedule.budget_tokens={round(tokens * 1.2)}"
    assert token_budget_samples(load_pretrain_config(None, overrides), manifest) == 192


def test_budget_and_total_steps_together_are_refused(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("schedule:\n  budget_tokens: 1000\n  total_steps: 10\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: .*budget_tokens and schedule\.total_steps"):
        load_pretrain_config(config, [])
