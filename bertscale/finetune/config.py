"""FinetuneConfig: one typed tree for a fine-tuning job (defaults < YAML < key=value overrides).

The optimizer, schedule, engine and MLflow sections are the pretrain ones, so a fine-tuning run is
driven by the same DeepSpeed engine and tracker as pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bertscale.errors import DataError
from bertscale.finetune.readers import BUILTIN_DATASETS, FORMATS, TOKEN_FORMATS, infer_format
from bertscale.runtime.config import EngineConfig, MlflowConfig, OptimizerConfig, ScheduleConfig


@dataclass
class FinetuneModelConfig:
    RANGES: ClassVar[dict[str, str]] = {"classifier_dropout": "[0, 1)"}

    # A pretrain run dir, step dir or ZeRO-sharded DeepSpeed dir (see bertscale.model_dir.load_pretrained).
    checkpoint: str | None = None
    # pretrained: start from the checkpoint's weights; random: same architecture and tokenizer, fresh
    # weights (the baseline that shows what pretraining buys).
    init: Literal["pretrained", "random"] = "pretrained"
    # SentencePiece .model, tokenizer.json or HF tokenizer dir; defaults to the checkpoint's tokenizer.
    tokenizer: str | None = None
    # BertConfig fields: the architecture when there is no checkpoint, else overrides (e.g. dropout).
    config: dict[str, Any] = field(default_factory=dict)
    classifier_dropout: float | None = None  # None: hidden_dropout_prob, as in HuggingFace


@dataclass
class DatasetConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "validation_fraction": "[0, 1)",
        "test_fraction": "[0, 1)",
        "max_examples": "[2, inf)",
    }

    name: str | None = None  # a built-in dataset: rotten_tomatoes | pang_lee (the default) | optimus_ner
    path: str | None = None  # or your own file (the whole dataset, split by the fractions below)
    format: str | None = None  # csv | tsv | jsonl | fasttext | conll; inferred from the file name if unset
    encoding: str = "utf-8"
    text_column: str = "text"
    text_pair_column: str | None = None  # set for sentence-pair tasks
    label_column: str = "label"
    labels: list[str] | None = None  # the label set, in id order; rows with other labels are skipped
    validation_path: str | None = None  # a fixed held-out file instead of validation_fraction
    test_path: str | None = None  # a fixed test file instead of test_fraction
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_examples: int | None = None  # a deterministic random subset, for quick runs
    on_error: Literal["skip", "fail"] = "skip"  # malformed rows: skip and count, or stop

    def __post_init__(self) -> None:
        if self.name is not None and self.path is not None:  # neither: FinetuneConfig picks pang_lee
            raise ValueError("set exactly one of dataset.name (built-in) or dataset.path")
        if self.name is not None and self.name not in BUILTIN_DATASETS:
            raise ValueError(f"dataset.name '{self.name}' is not one of {sorted(BUILTIN_DATASETS)}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"dataset.format '{self.format}' is not one of {FORMATS}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"dataset.{name} must be in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("dataset.validation_fraction + test_fraction must leave training data")
        if self.max_examples is not None and self.max_examples < 2:
            raise ValueError("dataset.max_examples must be at least 2")


@dataclass
class TrainConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "micro_batch_size": "[1, inf)",
        "epochs": "(0, inf)",
        "max_steps": "[1, inf)",
        "eval_every": "[0, inf)",
        "log_every": "[1, inf)",
        "max_eval_examples": "[1, inf)",
    }

    micro_batch_size: int = 16
    epochs: float = 3.0  # passes over the training split; max_steps wins when set
    max_steps: int | None = None
    eval_every: int = 50  # optimizer steps between evaluations on the validation split; 0: only the final one
    log_every: int = 10
    max_eval_examples: int | None = (
        None  # cap validation examples evaluated mid-run (the final eval uses all)
    )


@dataclass
class FinetuneConfig:
    RANGES: ClassVar[dict[str, str]] = {"max_seq_length": "[8, inf)", "seed": "[0, inf)"}

    task: Literal["sequence_classification", "token_classification"] = "sequence_classification"
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    max_seq_length: int = 128
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="bertscale-finetune"))
    seed: int = 0
    # several seeds: one run per seed into {output_dir}/seed_N, then the median and spread of each
    # final metric (bertscale.finetune.seeds); `seed` is then unused
    seeds: list[int] = field(default_factory=list)
    output_dir: str = "runs/finetune"
    overwrite: bool = False  # a non-empty output_dir: replace this job's files in it (others are kept)

    def __post_init__(self) -> None:
        if self.dataset.name is None and self.dataset.path is None:
            self.dataset.name = "pang_lee"  # the default; a dataset.path override alone replaces it
        self._check_task_matches_data()
        if self.model.checkpoint is None and self.model.init == "pretrained":
            raise ValueError("model.checkpoint is required unless model.init=random")
        if self.model.checkpoint is None and self.model.tokenizer is None:
            raise ValueError("model.tokenizer is required when there is no model.checkpoint")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")

    def _check_task_matches_data(self) -> None:
        """CoNLL files hold one label per word, the other formats one per text: refuse a mismatch
        now rather than train on nonsense (or fail once the engine is up)."""
        ds = self.dataset
        if ds.name is not None:
            sources = [(ds.name, BUILTIN_DATASETS[ds.name].format)]
        else:
            paths = [p for p in (ds.path, ds.validation_path, ds.test_path) if p]
            sources = [(p, ds.format or _format_of(p)) for p in paths]
        for where, fmt in sources:
            per_word = fmt in TOKEN_FORMATS
            if fmt is not None and per_word != (self.task == "token_classification"):
                kind = "one label per word" if per_word else "one label per text"
                raise ValueError(f"{where}: {fmt} data ({kind}) does not fit task={self.task}")

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)


def _format_of(path: str) -> str | None:
    try:
        return infer_format(Path(path))
    except DataError:
        return None  # the reader names the file when it opens it, still before any work
