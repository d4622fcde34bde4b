"""Our fine-tuning engine trains like ``transformers.Trainer`` (benchmarks/finetune_vs_transformers.py).

Same weights, same batches, dropout off: our DeepSpeed engine (AdamW with no decay on biases and
LayerNorm, clipping, warmup + linear decay) against the optimizer, schedule and clipping Trainer
builds. Runs in its own process (DeepSpeed's process group stays out of the test session).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import QUIET_ENV, REPO

pytest.importorskip("transformers")

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, transformers
    from bertscale.finetune.heads import HEADS
    from bertscale.model import IGNORE_INDEX, BertConfig
    from bertscale.runtime.config import EngineConfig, OptimizerConfig, ScheduleConfig
    from bertscale.runtime.engine import create_engine, init_distributed

    # weight decay and clipping large enough to matter in 6 steps (the benchmark: 0.01 and 1.0)
    STEPS, OFF = 6, {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    CONFIG = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, **OFF)
    HF = {"sequence_classification": "BertForSequenceClassification",
          "token_classification": "BertForTokenClassification"}

    def batches(task):
        g = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            ids = torch.randint(5, 120, (4, 10), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 6:] = 0
            ids[mask == 0] = 0
            if task == "token_classification":
                labels = torch.randint(0, 3, (4, 10), generator=g)
                labels[mask == 0] = IGNORE_INDEX
                labels[:, 0] = IGNORE_INDEX  # [CLS], as our NER features
            else:
                labels = torch.randint(0, 3, (4,), generator=g)
            yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}

    init_distributed()
    results = {}
    for task in HF:
        for warmup in (0, 3):
            torch.manual_seed(0)
            ours = HEADS[task](CONFIG, 3, 0.0)
            hf = getattr(transformers, HF[task])(transformers.BertConfig(**CONFIG.to_hf_dict(), num_labels=3))
            hf.load_state_dict(ours.state_dict())
            engine = create_engine(ours, EngineConfig(zero_stage=0, precision="fp32", gradient_clipping=0.1),
                                   OptimizerConfig(lr=1e-3, eps=1e-8, weight_decay=0.1),
                                   ScheduleConfig(warmup_steps=warmup, decay="linear"), 4, STEPS)
            args = transformers.TrainingArguments(
                output_dir=sys.argv[1], max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-3,
                adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=0.1, warmup_steps=warmup,
                lr_scheduler_type="linear", report_to=[], use_cpu=True)
            trainer = transformers.Trainer(model=hf, args=args)
            trainer.create_optimizer_and_scheduler(STEPS)
            opt, sched = trainer.optimizer, trainer.lr_scheduler
            engine.train(), hf.train()
            run = {"lr": [], "hf_lr": [], "loss": [], "hf_loss": []}
            for batch in batches(task):
                run["lr"].append(engine.get_lr()[0])
                run["hf_lr"].append(sched.get_last_lr()[0])
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                hf_loss = hf(**batch).loss  # Trainer's inner loop with one process, no accumulation
                hf_loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.1)
                opt.step(), sched.step(), opt.zero_grad()
                run["loss"].append(loss.item())
                run["hf_loss"].append(hf_loss.item())
            theirs = dict(hf.named_parameters())
            run["max_weight_diff"] = max(
                (ours.state_dict()[name] - theirs[name]).abs().max().item() for name in theirs)
            results[f"{task}/{warmup}"] = run
    print("RESULTS " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path_factory.mktemp("trainer"))],
        cwd=REPO,
        env={**os.environ, **QUIET_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_without_warmup_the_training_trajectory_is_transformers_trainers(runs, task):
    run = runs[f"{task}/0"]
    assert run["lr"] == pytest.approx(run["hf_lr"], rel=1e-9)
    assert run["loss"] == pytest.approx(run["hf_loss"], rel=1e-5, abs=1e-6)
    assert len(set(run["loss"])) == len(run["loss"])  # the weights did move
    assert run["max_weight_diff"] < 1e-5


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_warmup_is_one_step_ahead_of_transformers(runs, task):
    """The one known difference: our warmup multiplier at step k is (k + 1) / warmup, transformers'
    k / warmup (its first step runs at lr 0); the linear decay after warmup is the same."""
    run = runs[f"{task}/3"]
    assert run["hf_lr"][0] == 0.0
    assert run["lr"][:2] == pytest.approx(run["hf_lr"][1:3], rel=1e-9)
    assert run["lr"][3:] == pytest.approx(run["hf_lr"][3:], rel=1e-9)
