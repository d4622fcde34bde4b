"""Fault tests with real processes: a rank killed, a crash inside a checkpoint save, a Ray worker
killed mid-pipeline, a truncated shard, the MLflow server gone mid-run.

Runs are tiny (2 layers, hidden 64, 12 steps of micro batch 8 on ``tiny_shards``); jobs run in
their own sessions and every process tree left behind is SIGKILLed in ``finally``. Whether servers
bind only 127.0.0.1 is asserted in tests/infra (MLflow: every listening socket; Ray head: the job
API) and ``torch.load`` being weights_only in tests/bertscale/test_security.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers.processes
import psutil
import pytest
import torch
from helpers.configs import tiny_pretrain_yaml
from helpers.processes import REPO, free_port, kill_tree, launched, run_command, run_to_end, tail, wait_for
from safetensors.torch import load_file

from bertscale.config import save_config
from bertscale.data_pipeline.schema import load_manifest
from bertscale.model import BertForPreTraining
from bertscale.model_dir import load_pretrained
from bertscale.pretrain.checkpoint import PAUSE_IN_SAVE

MAX_STEPS = 12

CONFIG = tiny_pretrain_yaml(
    eval={"every": 0, "max_batches": 2},
    checkpoint={"save_every": 4, "keep_last": 3},
    mlflow={"experiment": "faults"},
    debug={"log_sample_ids": True},
    max_steps=MAX_STEPS,
)


def pretrain_command(shards: Path, output_dir: Path, *overrides: str, ranks: int = 1) -> list[str]:
    return helpers.processes.pretrain_command(CONFIG, shards, output_dir, *overrides, ranks=ranks)


def sample_ids(output_dir: Path) -> dict[tuple[int, int], list[int]]:
    """(step, micro batch) -> sample ids, from every rank's log; every record of a key must agree."""
    seen: dict[tuple[int, int], list[int]] = {}
    for path in sorted(output_dir.glob("sample_ids.rank*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            key = (record["step"], record["micro"])
            assert seen.setdefault(key, record["samples"]) == record["samples"], (path, key)
    return seen


def logged(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def losses(records: list[dict]) -> dict[int, float]:
    """step -> loss; a step logged again by a resumed run keeps its latest value."""
    return {m["step"]: m["loss"] for m in records if "loss" in m}


def latest(output_dir: Path) -> str | None:
    path = output_dir / "checkpoints" / "latest"
    return path.read_text().strip() if path.is_file() else None


def step_of(name: str) -> int:
    return int(name.removeprefix("step_"))


def assert_continues_exactly(reference: dict[int, float], output_dir: Path, resumed: list[dict]) -> None:
    got = losses(logged(output_dir))
    assert sorted(got) == sorted(reference) == list(range(1, MAX_STEPS + 1))
    assert resumed, "the resumed run logged nothing"
    for step, value in got.items():
        assert value == pytest.approx(reference[step], rel=1e-6, abs=1e-6), (step, got, reference)


# --- 1. kill -9 of one training rank ----------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(tiny_shards, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run (output dir: metrics.jsonl, sample_ids.rank*.jsonl)."""
    out = tmp_path_factory.mktemp("faults") / "reference2"
    log = out.parent / "reference2.log"
    assert run_to_end(pretrain_command(tiny_shards, out, ranks=2), log) == 0, tail(log)
    return out


@pytest.fixture(scope="module")
def reference_two_ranks(reference_run) -> dict[int, float]:
    return losses(logged(reference_run))


def _rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process | None:
    """The training process of ``rank``: a child of deepspeed.launcher.launch (not a DataLoader worker)."""
    for p in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            parent = p.parent()
            launcher_child = parent and "deepspeed.launcher.launch" in " ".join(parent.cmdline())
            if launcher_child and p.environ().get("RANK") == str(rank):
                return p
    return None


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_9_one_rank_then_resume_continues_exactly(reference_two_ranks, tiny_shards, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    cmd = pretrain_command(tiny_shards, out, ranks=2)
    with launched(cmd, log) as proc:
        rank1 = wait_for(lambda: _rank_process(proc, 1), proc, "rank 1 started")
        wait_for(lambda: latest(out), proc, "the first checkpoint")
        killed_after = latest(out)
        rank1.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=120)  # the launcher notices the dead rank and stops the other: no hang
    assert code != 0, tail(log)
    assert step_of(killed_after) < MAX_STEPS  # killed mid-run, not after the end
    resume_from = latest(out)
    assert resume_from is not None and step_of(resume_from) < MAX_STEPS
    before = len(logged(out))

    assert run_to_end(cmd, log) == 0, tail(log)  # the same command resumes from `latest`
    assert f"resumed from {out / 'checkpoints' / resume_from}" in log.read_text()
    resumed = logged(out)[before:]
    assert [m["step"] for m in resumed if "loss" in m] == list(range(step_of(resume_from) + 1, MAX_STEPS + 1))
    assert_continues_exactly(reference_two_ranks, out, resumed)


@pytest.mark.slow
@pytest.mark.distributed
def test_elastic_resume_2_then_1_then_2_ranks_continues_the_same_run(reference_run, tiny_shards, tmp_path):
    """2 ranks (ZeRO-2) crash after step 6 -> 1 rank (ZeRO-1, 2 accumulation steps) from step 4,
    crashes after 10 -> 2 ranks (ZeRO-2) from step 8 to the end: the same samples in the same
    steps and micro batches, and the losses of the uninterrupted 2-rank run."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    two = pretrain_command(tiny_shards, out, ranks=2)
    assert run_to_end([*two, "debug.exit_after_step=6"], log) == 17, tail(log)
    assert latest(out) == "step_00000004"
    one = pretrain_command(tiny_shards, out, "engine.zero_stage=1", "debug.exit_after_step=10")
    assert run_to_end(one, log) == 17, tail(log)
    text = log.read_text()
    assert f"resumed from {out / 'checkpoints' / 'step_00000004'} at step 4 (saved by 2 ranks" in text
    assert "engine.gradient_accumulation_steps 1 -> 2" in text
    assert latest(out) == "step_00000008"
    assert run_to_end(two, log) == 0, tail(log)
    assert (
        f"resumed from {out / 'checkpoints' / 'step_00000008'} at step 8 (saved by 1 ranks" in log.read_text()
    )

    reference = sample_ids(reference_run)
    assert sorted(reference) == [(s, u) for s in range(1, MAX_STEPS + 1) for u in range(2)]
    assert sample_ids(out) == reference  # every micro batch of every step, whichever run served it
    got, expected = losses(logged(out)), losses(logged(reference_run))
    assert sorted(got) == sorted(expected) == list(range(1, MAX_STEPS + 1))
    for step, value in got.items():  # ranks reduce in another order: float tolerance, not bitwise
        assert value == pytest.approx(expected[step], rel=1e-4), (step, got, expected)


# --- 1c. preemption -----------------------------------------------------------------------------------


def _ignore_usr1() -> None:  # what bertscale.infra.launch does before exec-ing the DeepSpeed launcher
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("sig", [signal.SIGUSR1])
def test_preemption_signal_checkpoints_exits_75_and_resumes_exactly(
    reference_run, tiny_shards, tmp_path, sig
):
    """SLURM --signal: every process of the job gets SIGUSR1; the ranks finish the step they are in,
    checkpoint it and exit 75; the same command resumes from there and the losses are the reference's."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    cmd = pretrain_command(tiny_shards, out, "checkpoint.save_every=0", ranks=2)
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, preexec_fn=_ignore_usr1,
        )  # fmt: skip
    try:
        wait_for(lambda: max(losses(logged(out)), default=0) >= 3, proc, "step 3")
        os.killpg(proc.pid, sig)  # launcher, ranks and DataLoader workers alike
        code = proc.wait(timeout=300)
    finally:
        kill_tree(proc)
    assert code == 75, tail(log)
    stopped = latest(out)
    assert stopped is not None and 3 <= step_of(stopped) < MAX_STEPS, stopped
    assert max(losses(logged(out))) == step_of(stopped)  # stopped right after the checkpointed step
    assert "checkpoint of step" in log.read_text()
    assert run_to_end(cmd, log) == 0, tail(log)
    assert f"resumed from {out / 'checkpoints' / stopped}" in log.read_text()
    assert sample_ids(out) == sample_ids(reference_run)
    assert_continues_exactly(losses(logged(reference_run)), out, logged(out))


# --- 1d. a stuck rank -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_a_stuck_rank_ends_the_job_with_one_line_naming_step_and_rank(tiny_shards, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    timeout = 30
    cmd = pretrain_command(
        tiny_shards, out, f"engine.collective_timeout_s={timeout}", "debug.stall_at_step=3", ranks=2
    )
    with launched(cmd, log) as proc:
        wait_for(lambda: "debug.stall_at_step: rank stalls here" in log.read_text(), proc, "the stall")
        stalled = time.monotonic()
        code = proc.wait(timeout=timeout + 120)
        ended = time.monotonic() - stalled
    assert code != 0
    assert ended < timeout + 60, ended  # the launcher's own teardown adds seconds, not forever
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert errors and all("step 3 did not finish within 30 s" in line for line in errors), errors
    assert {line.split(":")[1].strip() for line in errors} <= {"rank 0", "rank 1"}
    assert "Traceback" not in log.read_text()


# --- 2. crash inside a checkpoint save --------------------------------------------------------------


def test_crash_during_checkpoint_save_keeps_previous_checkpoint(tiny_shards, tmp_path):
    """Killed while publishing step 8; the resumed run repeats steps 5-8 exactly, then finishes."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    checkpoints = out / "checkpoints"
    cmd = pretrain_command(tiny_shards, out)
    with launched(cmd, log, **{PAUSE_IN_SAVE: "8"}) as proc:
        # step 8's files are all written under the temporary name; rank 0 stalls before publishing them
        wait_for(lambda: "pausing before publishing step_00000008" in log.read_text(), proc, "the save pause")
        assert (checkpoints / ".step_00000008.tmp" / "trainer_state.json").is_file()
        kill_tree(proc)
    assert latest(out) == "step_00000004"
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith(".")) == [
        "latest",
        "step_00000004",
    ]  # the half-published step 8 is not visible under its final name

    pretrained = load_pretrained(out)
    config, weights = pretrained.config, pretrained.state_dict
    BertForPreTraining(config).load_state_dict(weights)  # strict: a complete checkpoint
    saved = load_file(checkpoints / "step_00000004" / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in saved.items())

    uninterrupted = losses(logged(out))  # steps 1-8 ran before the crash
    assert sorted(uninterrupted) == list(range(1, 9))
    before = len(logged(out))
    assert run_to_end(cmd, log) == 0, tail(log)
    assert f"resumed from {checkpoints / 'step_00000004'}" in log.read_text()
    resumed = losses(logged(out)[before:])
    assert sorted(resumed) == list(range(5, MAX_STEPS + 1))
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=1e-6), (step, resumed)
    assert latest(out) == f"step_{MAX_STEPS:08d}"
    assert not list(checkpoints.glob(".*.tmp"))  # the next save of step 8 cleared the leftover


# --- 3. a Ray worker killed mid-pipeline ------------------------------------------------------------


PIPELINE_TASKS = ("ray::_clean_task", "ray::encode_documents", "ray::build_samples")


def _busy_ray_worker(driver: subprocess.Popen) -> psutil.Process | None:
    """A Ray worker of this pipeline executing one of its tasks (Ray titles a busy worker ray::<task>)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in psutil.Process(driver.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if " ".join(p.cmdline()).startswith(PIPELINE_TASKS):  # not the agents, not ray::IDLE
                    return p
    return None


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def _manifest(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"].pop("output_dir") == str(root)  # the one field that may differ
    return manifest


def test_ray_worker_killed_mid_pipeline_output_identical(tiny_shards, tiny_config, tmp_path):
    """Ray retries the dead worker's task (max_retries): manifest and every shard byte-identical."""
    out, log = tmp_path / "data", tmp_path / "pipeline.log"
    config = tmp_path / "pipeline.yaml"
    save_config(tiny_config(out), config)
    with launched([sys.executable, "-m", "bertscale.data_pipeline", "--config", str(config)], log) as proc:
        worker = wait_for(lambda: _busy_ray_worker(proc), proc, "a busy Ray worker", timeout=120)
        title = " ".join(worker.cmdline())
        worker.kill()
        assert proc.wait(timeout=300) == 0, f"killed {title}\n{tail(log)}"
    assert not worker.is_running(), title
    assert "retried" in log.read_text(), tail(log)  # Ray reported the dead worker's task and re-ran it
    assert _manifest(out) == _manifest(tiny_shards)
    digests, expected = _digests(out), _digests(tiny_shards)
    shards = [s.name for split in load_manifest(tiny_shards).splits.values() for s in split.shards]
    assert sorted(expected) == sorted(["manifest.json", "tokenizer.model", *shards])  # nothing unlisted
    assert {k: v for k, v in digests.items() if k != "manifest.json"} == {
        k: v for k, v in expected.items() if k != "manifest.json"
    }


# --- 4. a truncated shard ---------------------------------------------------------------------------


@pytest.fixture
def damaged_shards(tiny_shards, tmp_path) -> tuple[Path, Path]:
    """A copy of ``tiny_shards`` whose second train shard read (seed 1234, one reader) is cut short."""
    from bertscale.pretrain.data import PretrainBatches

    root = tmp_path / "shards"
    shutil.copytree(tiny_shards, root)
    bad = PretrainBatches(root, "train", micro_batch_size=8, seed=1234).shard_at(1)
    bad.write_bytes(bad.read_bytes()[:700])  # truncated in the middle of a member
    return root, bad


def test_skip_mode_reader_keeps_the_rest_and_counts(damaged_shards):
    """The next good shard of the epoch's order stands in for the truncated one; it is counted once
    however often its slots come round; with nothing left to read the reader fails, not loops."""
    from bertscale.errors import DataError
    from bertscale.pretrain.data import PretrainBatches

    root, bad = damaged_shards
    train = load_manifest(root).splits["train"]
    names = [s.name for s in train.shards]
    reader = PretrainBatches(root, "train", micro_batch_size=8, seed=1234, on_corrupt_shard="skip")
    steps = 3 * len(names)  # three epochs of one shard per step
    served = [reader.read(step, 0)[1] for step in range(steps)]
    shards = {names[int(i) // train.samples_per_shard] for ids in served for i in ids}
    assert bad.name not in shards and shards == set(names) - {bad.name}  # every good shard is read
    assert reader.skipped == {bad.name}

    for path in root.glob("train-*.tar"):  # nothing left to read: an error, not an endless loop
        path.write_bytes(path.read_bytes()[:700])
    endless = PretrainBatches(root, "train", micro_batch_size=8, on_corrupt_shard="skip")
    with pytest.raises(DataError, match=f"all {len(names)} shards of the split are corrupt"):
        next(iter(endless))


def test_truncated_shard_fails_with_one_line_naming_it(damaged_shards, tmp_path):
    root, bad = damaged_shards
    cmd = pretrain_command(root, tmp_path / "run")
    proc = run_command(cmd, timeout=400)
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: corrupt or truncated shard ("), errors
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # the reader-level test above covers skipping in the default set
def test_truncated_shard_skipped_and_counted(damaged_shards, tmp_path):
    root, bad = damaged_shards
    out, log = tmp_path / "run", tmp_path / "run.log"
    assert run_to_end(pretrain_command(root, out, "data.on_corrupt_shard=skip"), log) == 0, tail(log)
    lines = log.read_text().splitlines()
    skipped = [line for line in lines if "; skipped (data.on_corrupt_shard=skip)" in line]
    assert len(skipped) == 1 and f"{bad}: corrupt or truncated shard" in skipped[0], skipped
    assert [m["skipped_shards"] for m in logged(out) if "skipped_shards" in m] == [1.0]
    assert sorted(losses(logged(out))) == list(range(1, MAX_STEPS + 1))
    assert latest(out) == f"step_{MAX_STEPS:08d}"


# --- 5. the MLflow server dies mid-run --------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_server_down_mid_run_training_finishes(tiny_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    from bertscale.infra.mlflow_server import MlflowServerConfig, running_server, sqlite_uri

    steps = 60  # long enough (seconds) to outlive the server by many steps
    server = MlflowServerConfig(sqlite_uri(tmp_path / "mlflow.db"), str(tmp_path / "art"), port=free_port())
    out, log = tmp_path / "run", tmp_path / "run.log"
    overrides = ("mlflow.enabled=true", f"mlflow.tracking_uri={server.url}", f"max_steps={steps}")
    cmd = pretrain_command(tiny_shards, out, *overrides, "checkpoint.save_every=0")
    with running_server(server, log_path=tmp_path / "server.log", timeout=150) as server_proc:
        client = MlflowClient(tracking_uri=server.url)

        def first_loss_arrived() -> bool:
            experiment = client.get_experiment_by_name("faults")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return bool(runs and "loss" in runs[0].data.metrics)

        with launched(cmd, log) as proc:
            wait_for(first_loss_arrived, proc, "the first metrics at the server")
            os.killpg(server_proc.pid, signal.SIGKILL)
            server_proc.wait(timeout=30)
            steps_before = max(losses(logged(out)))
            assert proc.wait(timeout=300) == 0, tail(log)
    assert steps_before < steps  # the server died mid-run
    assert "MLflow tracking disabled for this run" in log.read_text()
    assert sorted(losses(logged(out))) == list(range(1, steps + 1))
    assert latest(out) == f"step_{steps:08d}"
    assert (out / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").is_file()
