"""The transformers side of benchmarks/time_to_accuracy.py: ``transformers.Trainer`` pretraining.

    torchrun --nproc_per_node 2 benchmarks/tta_transformers.py --config RESOLVED.yaml --output-dir DIR
        [--save-every 10] [--device cpu|cuda]

``RESOLVED.yaml`` is our pretraining config after overrides (bertscale.config.save_config): the
model shape, batch, optimizer, schedule, gradient clipping, dropout, seed and shards all come from
it, so both sides train with the same hyperparameters. What is transformers' own: the model
(``BertForPreTraining``), its initialisation, the data order (Trainer's sampler) and the masking
(``DataCollatorForLanguageModeling`` on the unmasked pairs of our shards, padded per batch). A
checkpoint (``checkpoint-N``, weights + optimizer, as Trainer saves it) is written every
``--save-every`` steps; SIGUSR1 ends training after the step all ranks agree on, with a checkpoint
(as our pretraining does on preemption). Weights are evaluated afterwards by the driver.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.utils.data import Dataset

from bertscale.data_pipeline.schema import load_manifest, read_shard
from bertscale.data_pipeline.tokenizer import load_tokenizer_model, write_hf_tokenizer
from bertscale.errors import ConfigError
from bertscale.model_dir import find_tokenizer
from bertscale.pretrain.config import PretrainConfig, load_pretrain_config

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


class Pairs(Dataset):
    """The unmasked ``[CLS] A [SEP] B [SEP]`` pairs of a split: what the collator masks."""

    def __init__(self, shards: Path, split: str):
        manifest = load_manifest(shards)
        special = manifest.special()
        samples = itertools.chain.from_iterable(
            read_shard(p, special=special) for p in manifest.shard_paths(shards, split)
        )
        self.items = [
            {
                "input_ids": s.input_ids.tolist(),
                "token_type_ids": s.token_type_ids.tolist(),
                "next_sentence_label": int(s.next_sentence_label),
            }
            for s in samples
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def hf_tokenizer(shards: Path, max_length: int) -> transformers.PreTrainedTokenizerBase:
    """Our shards' tokenizer as transformers loads it (same ids; bertscale.finetune.export writes it so)."""
    tokenizer = find_tokenizer(shards)
    if tokenizer is None:
        raise ConfigError(f"{shards}: no tokenizer beside the shards")
    with tempfile.TemporaryDirectory() as tmp:
        write_hf_tokenizer(load_tokenizer_model(tokenizer.path), Path(tmp), max_length)
        return transformers.AutoTokenizer.from_pretrained(tmp)


def training_arguments(
    cfg: PretrainConfig, output_dir: Path, save_every: int, device: str
) -> transformers.TrainingArguments:
    if cfg.optimizer.name != "adamw" or cfg.schedule.min_lr_ratio or cfg.schedule.total_steps:
        raise ConfigError(
            "the transformers baseline runs AdamW with warmup + decay to 0 at max_steps: "
            "optimizer.name, schedule.min_lr_ratio and schedule.total_steps must keep their defaults"
        )
    return transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.data.micro_batch_size,
        gradient_accumulation_steps=cfg.engine.gradient_accumulation_steps,
        learning_rate=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,  # Trainer also exempts biases and LayerNorm
        adam_beta1=cfg.optimizer.betas[0],
        adam_beta2=cfg.optimizer.betas[1],
        adam_epsilon=cfg.optimizer.eps,
        max_grad_norm=cfg.engine.gradient_clipping,
        lr_scheduler_type=SCHEDULES[cfg.schedule.decay],
        warmup_steps=cfg.schedule.warmup_steps,
        seed=cfg.seed,
        bf16=cfg.engine.precision == "bf16",  # autocast: Trainer's way (ours: DeepSpeed's bf16 weights)
        fp16=cfg.engine.precision == "fp16",
        use_cpu=device == "cpu",
        ddp_backend="gloo" if device == "cpu" else None,
        dataloader_num_workers=cfg.data.num_workers,
        ddp_find_unused_parameters=False,  # every parameter gets a gradient (Trainer would check each step)
        # BertForPreTraining's loss is a mean, but it takes **kwargs, so Trainer would multiply it by
        # the number of processes (meant for losses summed over num_items_in_batch): 2x the gradient
        average_tokens_across_devices=False,
        save_strategy="steps",
        save_steps=save_every,
        logging_steps=cfg.metrics.log_every,
        report_to="none",
        disable_tqdm=True,
    )


class StopOnSignal(transformers.TrainerCallback):
    """SIGUSR1 on any rank: every rank saves and stops after the same step (one all-reduce per step)."""

    def __init__(self) -> None:
        self.signalled = False
        signal.signal(signal.SIGUSR1, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signalled = True

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([float(self.signalled)], device=args.device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        if flag.item():
            control.should_save = control.should_training_stop = True
        return control


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="a resolved pretraining config.yaml")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    stop = StopOnSignal()  # before the DataLoader forks its workers, which inherit the handler
    cfg = load_pretrain_config(args.config)
    manifest = load_manifest(cfg.data.shards)
    bert = cfg.model.resolve(manifest.vocab_size)
    transformers.set_seed(cfg.seed)
    model = transformers.BertForPreTraining(transformers.BertConfig(**bert.to_hf_dict()))
    tokenizer = hf_tokenizer(cfg.data.shards, bert.max_position_embeddings)
    collator = transformers.DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=cfg.data.masked_lm_prob
    )
    trainer = transformers.Trainer(
        model=model,
        args=training_arguments(cfg, args.output_dir, args.save_every, args.device),
        train_dataset=Pairs(cfg.data.shards, cfg.data.split),
        data_collator=collator,
        callbacks=[stop],
    )
    trainer.train()


if __name__ == "__main__":
    main()
