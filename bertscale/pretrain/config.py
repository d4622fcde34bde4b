"""PretrainConfig: one typed tree for a pretraining run (defaults < YAML < ``key=value``).

The sections fine-tuning shares (optimizer, schedule, engine, MLflow) live in bertscale.runtime.config.
Load with ``load_pretrain_config(path, overrides)``; the resolved config is saved with every run
and every checkpoint as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from bertscale.config import load_config
from bertscale.errors import ConfigError
from bertscale.model import BertConfig
from bertscale.runtime.config import EngineConfig, MlflowConfig, OptimizerConfig, ScheduleConfig


@dataclass
class PretrainModelConfig(BertConfig):
    """BertConfig fields; ``vocab_size`` left unset is taken from the shard manifest."""

    vocab_size: int | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.resolve(self.vocab_size or 1)  # validate the shape now, not when the run starts

    def resolve(self, manifest_vocab_size: int) -> BertConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig)}
        values["vocab_size"] = self.vocab_size or manifest_vocab_size
        return BertConfig(**values)


@dataclass
class DataConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "micro_batch_size": "[1, inf)",
        "masked_lm_prob": "(0, 1)",
        "max_predictions_per_seq": "[1, inf)",
        "num_workers": "[0, inf)",
        "pad_to_multiple_of": "[1, 4096]",
    }

    shards: Path = Path("data/shards")  # a data_pipeline output directory (manifest.json + tars)
    split: str = "train"
    eval_split: str = "validation"
    micro_batch_size: int = 8  # sequences per rank per forward/backward
    masking: Literal["static", "dynamic"] = "static"  # static: the pipeline's draws, one per epoch
    # dynamic masking only (static draws were made by the pipeline's pairs.* settings of the same names)
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int | None = None  # None: no cap (labels are dense, no fixed M is needed)
    num_workers: int = 1  # DataLoader worker processes per rank (0 = read in the training process)
    on_corrupt_shard: Literal["fail", "skip"] = "fail"  # skip: log the shard, count it, read the next
    # pad each batch's length up to a multiple (8 or 64 on GPUs: fewer distinct shapes for kernels and
    # torch.compile); 1 = to the longest sequence. Unpadded ops and varlen attention never see the pads.
    pad_to_multiple_of: int = 1


@dataclass
class PretrainScheduleConfig(ScheduleConfig):
    # A token budget (non-padding tokens, all ranks): the decay ends and training stops when it is
    # used up (max_steps still caps). Counted in samples at the split's mean tokens per sample
    # (manifest), checkpointed, so a resumed run ends at the same point.
    budget_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError("schedule.budget_tokens must be >= 1")
        if self.budget_tokens is not None and self.total_steps is not None:
            raise ValueError("schedule.budget_tokens and schedule.total_steps both end the decay: set one")


@dataclass
class CheckpointConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "save_every": "[0, inf)",
        "keep_last": "[0, inf)",
        "init_new_lr_scale": "(0, inf)",
    }

    save_every: int = 1000  # optimizer steps; 0 saves only at the end
    keep_last: int = 3
    resume: str = "auto"  # auto (latest in output_dir if any) | never | PATH to a run/checkpoint
    init_from: Path | None = None  # load model weights only (e.g. phase 2 from phase 1)
    # the tensors init_from lacked (fresh MLM/NSP heads on a published encoder) train at
    # optimizer.lr x this: a fresh head needs a far higher rate than the pretrained encoder it reads
    init_new_lr_scale: float = 1.0
    # how a fresh MLM head starts. random: HF's N(0, 0.02) transform, zero bias (its logits are noise,
    # below the constant answer). readout: transform dense = identity, bias = log unigram frequency of
    # the training shards' tokens, so the tied decoder reads the encoder's top states as they are and
    # the head starts at or above the constant answer (benchmarks/README.md, MiniLM)
    init_new_mlm_head: Literal["random", "readout"] = "random"


@dataclass
class EvalConfig:
    RANGES: ClassVar[dict[str, str]] = {"every": "[0, inf)", "max_batches": "[0, inf)"}

    every: int = 500  # optimizer steps; 0 disables periodic eval (a final eval still runs)
    max_batches: int = 50  # per rank


@dataclass
class MetricsConfig:
    RANGES: ClassVar[dict[str, str]] = {"log_every": "[1, inf)", "peak_tflops": "(0, inf)"}

    log_every: int = 10
    peak_tflops: float | None = None  # per device, for MFU; None: a known GPU's bf16 peak, none on CPU


@dataclass
class DebugConfig:
    RANGES: ClassVar[dict[str, str]] = {"exit_after_step": "[1, inf)"}

    exit_after_step: int | None = None  # hard-exit every rank after this step (tests crash + resume)
    stall_at_step: int | None = None  # rank stall_rank hangs before this step (tests collective timeouts)
    stall_rank: int = 1
    log_sample_ids: bool = False  # {output_dir}/sample_ids.rank{R}.jsonl: step, micro batch, sample ids


@dataclass
class PretrainConfig:
    RANGES: ClassVar[dict[str, str]] = {"seed": "[0, inf)", "max_steps": "[1, inf)"}

    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: PretrainScheduleConfig = field(default_factory=PretrainScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    output_dir: Path = Path("runs/pretrain")
    overwrite: bool = False  # a non-empty output_dir that is not this run's: write into it anyway
    seed: int = 1234
    max_steps: int = 1000  # optimizer steps


def load_pretrain_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    cfg = load_config(PretrainConfig, path, overrides)
    if cfg.optimizer.name == "lamb" and cfg.engine.zero_stage > 0:
        # ZeRO flattens and partitions parameters, so LAMB's per-parameter trust ratio is lost.
        raise ConfigError(
            f"{path}: optimizer.name=lamb needs engine.zero_stage=0 (ZeRO partitions break LAMB)"
        )
    return cfg
