"""End to end: ``python -m bertscale.finetune`` on tiny checkpoints: MLflow run, PNG curves, saved model, ZeRO input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers.processes import deepspeed_launcher

from bertscale.config import load_config
from bertscale.errors import CheckpointError, ConfigError, run_cli
from bertscale.finetune.__main__ import main as cli_main
from bertscale.finetune.checkpoint import init_encoder, load_base, load_finetuned
from bertscale.finetune.config import FinetuneConfig, FinetuneModelConfig
from bertscale.finetune.data import eval_batches, load_task_data, load_tokenizer
from bertscale.finetune.evaluate import evaluate
from bertscale.finetune.heads import BertForTokenClassification

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bertscale" / "finetune" / "configs"


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _mlflow_run(output_dir: Path, tracking_uri: str | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bertscale-finetune")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


@pytest.mark.integration
def test_cli_sentence_classification_tracks_metrics_curves_and_saves_model(tiny_checkpoint, tmp_path):
    from bertscale.runtime.config import MlflowConfig
    from bertscale.runtime.tracking import Tracker

    out = tmp_path / "sentiment"
    run_dir = tiny_checkpoint.parent.parent  # a pretrain run dir: follows checkpoints/latest
    # the checkpoint as a pretraining run would have logged it, in the store fine-tuning uses
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pre = Tracker(MlflowConfig(tracking_uri=store), None, output_dir=tmp_path / "pre")
    source_model = pre.log_model(tiny_checkpoint, name="pre-step10", step=10)
    pre.close()
    proc = _run(
        [
            "bertscale.finetune",
            "--config",
            str(CONFIGS / "sentiment.yaml"),
            f"model.checkpoint={run_dir}",
            "dataset.max_examples=240",
            "train.max_steps=12",
            "train.micro_batch_size=8",
            "train.eval_every=6",
            "train.log_every=3",
            "schedule.warmup_steps=2",
            f"output_dir={out}",
            f"mlflow.tracking_uri={store}",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    client, run = _mlflow_run(out, store)
    assert run.info.status == "FINISHED"
    # lineage: which data, which checkpoint (the logged model of the pretraining run), the final model
    run = client.get_run(run.info.run_id)  # search_runs leaves a run's model inputs out
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "rotten_tomatoes" and json.loads(data.dataset.profile)["files"] == 1
    assert [m.model_id for m in run.inputs.model_inputs] == [source_model]
    assert run.data.tags["bertscale.source_run_id"] == pre.run_id
    assert f"runs/{pre.run_id}" in run.data.tags["mlflow.note.content"]
    (final,) = run.outputs.model_outputs
    model = client.get_logged_model(final.model_id)
    assert model.tags["bertscale.path"] == str((out / "model").resolve()) and final.step == 12
    assert {"eval_accuracy", "test_accuracy"} <= {m.key for m in model.metrics}
    assert run.data.params["dataset.name"] == "rotten_tomatoes"
    assert run.data.params["labels"] == "rotten,fresh"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [3, 6, 9, 12]
    assert all(0.0 < m.value < 5.0 for m in losses)
    # the final logged model re-logs its step's held-out metrics with its model id (MLflow keeps a
    # logged model's metrics as run metrics): step 12 appears twice with one value
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert (
        sorted({m.step for m in history}) == [0, 6, 12]
        and len({m.value for m in history if m.step == 12}) == 1
    )
    for key in ("test_accuracy", "test_macro_f1", "eval_macro_f1", "lr", "tokens_per_s"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "results.json", "config.yaml", "metrics.jsonl", "head.json"} <= artifacts
    png = Path(client.download_artifacts(run.info.run_id, "curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    # the saved model reloads and reproduces the reported test metric exactly
    results = json.loads((out / "results.json").read_text())
    model, head = load_finetuned(out / "model")
    assert (
        head["id2label"] == {0: "rotten", 1: "fresh"}
        and head["architecture"] == "BertForSequenceClassification"
    )
    cfg = load_config(FinetuneConfig, out / "model" / "config.yaml")
    data = load_task_data(
        cfg.dataset, load_tokenizer(out / "model" / "tokenizer.model"), cfg.max_seq_length, cfg.seed
    )
    again = evaluate(model, eval_batches(data.splits["test"], 16, 0), data.labels)
    assert again["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    assert again["loss"] == pytest.approx(results["test_loss"], rel=1e-4)


ZERO_CHECKPOINT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import torch
    from bertscale.pretrain.checkpoint import save_checkpoint
    from bertscale.runtime.config import EngineConfig, OptimizerConfig, ScheduleConfig
    from bertscale.pretrain.config import PretrainConfig
    from bertscale.model_dir import Tokenizer
    from bertscale.runtime.engine import create_engine, init_distributed
    from bertscale.model import BertConfig, BertForPreTraining

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    init_distributed()
    config = BertConfig(**{k: v for k, v in json.loads((src / "bert_config.json").read_text()).items()
                           if k in BertConfig.__dataclass_fields__})
    torch.manual_seed(1)
    engine = create_engine(BertForPreTraining(config), EngineConfig(zero_stage=2), OptimizerConfig(),
                           ScheduleConfig(), 2, 10)
    step = save_checkpoint(engine, out / "checkpoints", 10, bert_config=config, run_config=PretrainConfig(),
                           tokenizer=Tokenizer.from_path(src / "tokenizer.model"), trainer_state={"data": None}, keep_last=1)
    torch.save({k: v.clone() for k, v in engine.module.state_dict().items()}, out / "reference.pt")
    (step / "model.safetensors").unlink()  # readers must now gather the ZeRO shards
    """
)


@pytest.fixture(scope="module")
def zero_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero")
    script = out / "make.py"
    script.write_text(ZERO_CHECKPOINT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_checkpoint), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_zero_sharded_checkpoint_initialises_the_encoder_exactly(zero_checkpoint):
    deepspeed_dir = zero_checkpoint / "checkpoints" / "step_00000010" / "deepspeed"
    assert (
        any(deepspeed_dir.rglob("*optim_states.pt"))
        and not (deepspeed_dir.parent / "model.safetensors").exists()
    )
    base = load_base(FinetuneModelConfig(checkpoint=str(deepspeed_dir)))
    assert base.tokenizer.files == (deepspeed_dir.parent / "tokenizer.model",)
    model = BertForTokenClassification(base.config, num_labels=3)
    init_encoder(model, base.weights, base.source)
    reference = torch.load(zero_checkpoint / "reference.pt", weights_only=True)
    own = model.state_dict()
    encoder_keys = [k for k in own if k.startswith("bert.")]
    assert len(encoder_keys) > 30
    for key in encoder_keys:
        torch.testing.assert_close(own[key], reference[key], rtol=0, atol=0)


@pytest.mark.slow  # ~50 s idle, minutes on a busy 2-core machine
@pytest.mark.distributed
def test_two_rank_token_classification_from_zero_checkpoint(zero_checkpoint, tmp_path):
    """``deepspeed --num_accelerators 2 --module bertscale.finetune``: 2 CPU ranks, ZeRO-2, from a ZeRO dir."""
    out = tmp_path / "ner"
    launcher = deepspeed_launcher(2)
    args = [
        "--module",
        "bertscale.finetune",
        "--config",
        str(CONFIGS / "ner.yaml"),
        f"model.checkpoint={zero_checkpoint / 'checkpoints' / 'step_00000010' / 'deepspeed'}",
        "dataset.max_examples=160",
        "train.max_steps=8",
        "train.micro_batch_size=4",  # x 2 ranks: global batch 8
        "train.eval_every=4",
        "train.log_every=4",
        "engine.zero_stage=2",
        f"output_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    client, run = _mlflow_run(out)  # one run: only rank 0 tracks
    assert run.data.params["world_size"] == "2"
    for key in ("eval_f1", "eval_precision", "eval_recall", "test_f1", "test_token_accuracy", "loss"):
        assert 0.0 <= run.data.metrics[key] < 10.0, key
    history = client.get_metric_history(run.info.run_id, "eval_f1")
    # the final model's logged-model metrics repeat the last step's value: one value per step
    assert sorted({m.step for m in history}) == [0, 4, 8]
    assert len({(m.step, m.value) for m in history}) == 3
    assert "curves.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    model, head = load_finetuned(out / "model")
    assert head["id2label"][0] == "O" and len(head["id2label"]) == model.num_labels


def test_bad_inputs_fail_with_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys):
    cases = [
        (["model.checkpoint=/nonexistent/run"], "/nonexistent/run: checkpoint not found"),
        (
            [
                f"model.checkpoint={tiny_checkpoint}",
                "dataset.name=null",
                "dataset.path=/no/such.csv",
                "max_seq_length=32",
            ],
            "/no/such.csv",
        ),
        ([f"model.checkpoint={tiny_checkpoint}", "max_seq_length=512"], "max_position_embeddings 64"),
        ([f"model.checkpoint={tiny_checkpoint}", "dataset.nmae=x"], "did you mean 'dataset.name'"),
    ]
    for overrides, expected in cases:
        assert run_cli(cli_main, [*overrides, f"output_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err


def test_config_rules():
    with pytest.raises(ConfigError, match=r"model\.checkpoint is required"):
        load_config(FinetuneConfig, None, [])
    cfg = load_config(FinetuneConfig, CONFIGS / "ner.yaml", ["model.checkpoint=x"])
    assert cfg.task == "token_classification" and cfg.dataset.name == "optimus_ner"
    assert cfg.optimizer.lr == pytest.approx(5e-4) and cfg.mlflow.experiment == "bertscale-finetune"
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor a DeepSpeed checkpoint"):
        load_base(FinetuneModelConfig(checkpoint=str(ROOT / "bertscale" / "finetune" / "configs")))
