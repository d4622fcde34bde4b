from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from bertscale.config import from_dict, load_config, save_config, split_cli, to_dict
from bertscale.errors import ConfigError, run_cli


@dataclass
class Optim:
    lr: float = 1e-4
    name: Literal["adamw", "lamb"] = "adamw"


@dataclass
class Job:
    steps: int = 10
    out: Path = Path("runs/x")
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)


def test_precedence_defaults_yaml_overrides(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("steps: 20\noptim:\n  lr: 3e-4\n")
    cfg = load_config(Job, cfg_file, ["optim.name=lamb", "tags=[a, b]", "seed=7"])
    assert cfg.steps == 20
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string: coerced
    assert cfg.optim.name == "lamb"
    assert cfg.tags == ["a", "b"]
    assert cfg.seed == 7
    assert cfg.out == Path("runs/x")


def test_unknown_key_names_file_and_suggests(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"job.yaml: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(Job, cfg_file)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=ten", "'steps' must be int"),
        ("optim.name=sgd", "must be one of"),
        ("steps", "expected key=value"),
        ("optim=3", "must be a mapping"),
    ],
)
def test_bad_values_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Job, None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(Job, bad)


def test_roundtrip_through_saved_yaml(tmp_path):
    cfg = load_config(Job, None, ["optim.lr=0.5", "tags=[x]"])
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(Job, tmp_path / "saved.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert from_dict(Job, to_dict(cfg)) == cfg


def test_split_cli_ignores_deepspeed_local_rank():
    path, overrides = split_cli(["--local_rank=1", "--config", "a.yaml", "x.y=2"])
    assert path == "a.yaml"
    assert overrides == ["x.y=2"]
    with pytest.raises(ConfigError, match="unexpected argument"):
        split_cli(["--bogus"])


def test_run_cli_prints_one_line(capsys):
    def main(argv):
        raise ConfigError("f.yaml: unknown key 'x'")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err == "error: f.yaml: unknown key 'x'\n"


def test_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        split_cli(["--help"], Job, "usage: job --config PATH")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: job --config PATH")
    expected = (
        "steps: int = 10",
        "out: Path = 'runs/x'",
        "tags: list[str] = []",
        "optim.lr: float = 0.0001",
        "optim.name: Literal['adamw', 'lamb'] = 'adamw'",
    )
    for line in expected:
        assert f"  {line}\n" in out
