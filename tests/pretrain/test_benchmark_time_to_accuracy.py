"""benchmarks/time_to_accuracy.py: its input checks (one line each), the budget clock, the headline search,
the summary over seeds."""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bertscale.errors import ConfigError, DataError
from bertscale.pretrain.config import load_pretrain_config
from tests.helpers.processes import REPO
from tests.helpers.shards import write_shards

BENCHMARKS = REPO / "benchmarks"


def _load(name: str):
    """A benchmark script as a module (it imports its sibling modules by name from benchmarks/)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


tta = _load("time_to_accuracy")
cpu_budget = sys.modules["cpu_budget"]  # the very module the script uses


def _error_line(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must fail with exit status 2 and exactly one ``error:`` line."""
    from bertscale.errors import run_cli

    assert run_cli(tta.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    argv = ["--device", "cuda", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as stopped:  # benchmarks/train.py's check: one line, exit 2
        tta.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda: not available on this machine"), err
    assert not (tmp_path / "o").exists()


def test_an_eval_split_with_too_few_masked_tokens_is_one_line(capsys, tmp_path):
    shards = write_shards(
        tmp_path / "shards", {"train": 2, "validation": 1}, per_shard=8
    )  # ~30 masked tokens
    line = _error_line(capsys, ["--shards", str(shards), "--out", str(tmp_path / "o")])
    assert str(shards) in line and "'validation' split has" in line and "at least 200" in line
    assert not (tmp_path / "o").exists()


def test_a_budget_that_ends_before_warmup_is_one_line(capsys, tmp_path):
    shards = write_shards(tmp_path / "shards", {"train": 2, "validation": 8}, per_shard=16)
    line = _error_line(
        capsys, ["--shards", str(shards), "--out", str(tmp_path / "o"), "--budget-cpu-s", "0.0001"]
    )
    warmup = load_pretrain_config(tta.REPO / "bertscale/pretrain/configs/tiny.yaml").schedule.warmup_steps
    assert "--budget-cpu-s 0.0001 ends before warmup" in line and f"schedule.warmup_steps={warmup}" in line
    assert not (tmp_path / "o").exists()


def test_checks_accept_what_is_measurable():
    tta.check_eval_split(200, 50, Path("s"), "validation")
    with pytest.raises(DataError, match="199 masked tokens in 50 pairs"):
        tta.check_eval_split(199, 50, Path("s"), "validation")
    floor = tta.warmup_floor_s(warmup_steps=30, flops_per_step=2e9, peak_flops=1e10)
    assert floor == pytest.approx(6.0)
    tta.check_budget(6.01, 30, floor, "CPU-s")
    with pytest.raises(ConfigError, match="ends before warmup"):
        tta.check_budget(6.0, 30, floor, "CPU-s")
    points = [tta.Point(step, 10.0 * step, "p") for step in (10, 20)]
    tta.check_reached_warmup("ours", points, 20, 100)
    with pytest.raises(ConfigError, match="ended ours's run at step 20, before the 30 warmup steps"):
        tta.check_reached_warmup("ours", points, 30, 100)


def test_accuracy_resolution_is_two_standard_errors():
    assert tta.resolution(0.05, 32695) == pytest.approx(2 * (0.05 * 0.95 / 32695) ** 0.5)
    assert tta.resolution(0.5, 100) == pytest.approx(0.1)


def test_clock_interpolates_between_samples():
    run = cpu_budget.BudgetRun(0, False, 0.0, 0.0, times=[100.0, 101.0, 103.0], clock=[0.0, 2.0, 4.0])
    assert run.clock_at(99.0) == 0.0
    assert run.clock_at(100.5) == pytest.approx(1.0)
    assert run.clock_at(102.0) == pytest.approx(3.0)
    assert run.clock_at(200.0) == 4.0


def _points(accuracies: dict[int, float | None]) -> list:
    return [tta.Point(step, float(step), f"ckpt{step}", acc) for step, acc in accuracies.items()]


def test_nearest_checkpoints_to_even_clock_values_and_the_last():
    points = _points(dict.fromkeys(range(5, 101, 5)))  # clock = step
    assert [p.step for p in tta.nearest(points, budget_s=100, n=4)] == [25, 50, 75, 100]
    # ended by max_steps at clock 50: the points spread over what it ran
    assert [p.step for p in tta.nearest(points[:10], budget_s=100, n=4)] == [10, 25, 35, 50]


def test_first_reaching_scores_inside_the_bracket(monkeypatch):
    scored = []

    def fake_score(point, validation, device):  # accuracy = step / 100, scored lazily
        scored.append(point.step)
        point.mlm_accuracy = point.step / 100
        return point

    monkeypatch.setattr(tta, "score", fake_score)
    points = _points({10: None, 20: 0.2, 30: None, 40: None, 50: None, 60: 0.6})
    hit = tta.first_reaching(points, 0.4, validation=[], device=torch.device("cpu"))
    assert hit.step == 40 and scored == [30, 40]  # stops at the first checkpoint that reaches it
    assert tta.first_reaching(points, 0.7, [], torch.device("cpu")) is None


def test_steady_clock_per_step_is_the_slope():
    points = [tta.Point(step, 30.0 + 0.5 * step, "p") for step in (10, 20, 40)]
    assert tta.steady_seconds_per_step(points) == pytest.approx(0.5)
    assert tta.steady_seconds_per_step(points[:1]) is None



def _race(seed: int, ratio: float | None) -> dict:
    curve = [{"step": 10, "clock_s": 5.0, "path": "p", "mlm_accuracy": 0.1, "nsp_accuracy": 0.5, "mlm_loss": 6.0}]
    return {
        "seed": seed, "ratio": ratio, "unit": "CPU-seconds (all processes)",
        "baselines": {"eval_mlm_baseline_accuracy": 0.05, "eval_nsp_baseline_accuracy": 0.5},
        "curves": {"ours": curve, "transformers": curve},
    }  # fmt: skip


def test_seeds_give_the_median_ratio_and_its_spread(tmp_path, capsys):
    tta.summarize([_race(1, 2.9), _race(2, 3.6), _race(3, 3.5)], tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert summary["median_ratio"] == 3.5 and (summary["min_ratio"], summary["max_ratio"]) == (2.9, 3.6)
    assert "median 3.50x faster [2.90, 3.60] (goal >= 3x) OK" in capsys.readouterr().out
    assert (tmp_path / "time_to_accuracy.png").read_bytes().startswith(b"\x89PNG")
    # a seed that never reaches its target: no median (it would hide the miss), the miss is named
    tta.summarize([_race(1, 3.2), _race(2, None)], tmp_path)
    assert "median_ratio" not in json.loads((tmp_path / "results.json").read_text())["summary"]
    assert "seed 2: not reached" in capsys.readouterr().out


@pytest.mark.parametrize("seeds", [["1", "1"], ["-1"]])
def test_seeds_must_be_distinct_and_non_negative(seeds, capsys):
    with pytest.raises(SystemExit):
        tta.parse(["--seeds", *seeds])
    assert "--seeds must be distinct and >= 0" in capsys.readouterr().err

BURNER = textwrap.dedent(
    """
    import signal, sys, time
    stop = []
    signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
    while not stop:
        sum(i * i for i in range(10000))
    open(sys.argv[1], "w").write("stopped")
    """
)


@pytest.mark.integration
def test_a_process_is_stopped_when_its_cpu_budget_is_spent(tmp_path):
    marker = tmp_path / "stopped"
    run = cpu_budget.run_under_budget(
        [sys.executable, "-c", BURNER, str(marker)],
        env={"PATH": "/usr/bin:/bin"},
        log=tmp_path / "log",
        budget_s=1.0,
        interval=0.05,
    )
    assert run.returncode == 0 and run.stopped and marker.read_text() == "stopped"
    assert 1.0 <= run.clock[-1] <= run.total_cpu_s + 0.1
    assert run.total_cpu_s < 3.0  # stopped soon after the budget, not left running
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the driver's own handling is untouched


@pytest.mark.slow
@pytest.mark.distributed
def test_end_to_end_on_tiny_shards(tiny_config, tmp_path):
    """Both sides really train (deepspeed 2 ranks, torchrun 2 processes), are stopped by the budget,
    are scored on the same split, and the figures and the PNG are written."""
    from bertscale.data_pipeline.run import run_pipeline
    from tests.helpers.processes import run_command

    # the real pipeline on tests/assets, with enough validation pairs (>= 200 masked tokens) to score
    tiny_shards = run_pipeline(tiny_config(tmp_path / "shards", split__validation_fraction=0.6))
    out = tmp_path / "bench"
    cmd = [
        sys.executable, str(BENCHMARKS / "time_to_accuracy.py"), "--shards", str(tiny_shards),
        "--out", str(out), "--budget-cpu-s", "45", "--points", "2", "--save-every", "2",
        "schedule.warmup_steps=2", "data.micro_batch_size=4", "eval.max_batches=1000",
    ]  # fmt: skip
    result = run_command(cmd, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "start: load average" in result.stdout and "end: load average" in result.stdout
    assert "HEADLINE:" in result.stdout
    results = json.loads((out / "results.json").read_text())
    for side in ("ours", "transformers"):
        curve = results["curves"][side]
        assert curve and all(0 <= p["mlm_accuracy"] <= 1 and 0 <= p["nsp_accuracy"] <= 1 for p in curve)
        assert results["summary"][side]["clock_s"] >= 45  # stopped by the budget, after it was spent
    assert (out / "time_to_accuracy.png").read_bytes().startswith(b"\x89PNG")
