"""Config sections every training job shares: optimizer, schedule, engine, MLflow.

pretrain and bertscale.finetune import these; neither copies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal


@dataclass
class OptimizerConfig:
    RANGES: ClassVar[dict[str, str]] = {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)"}

    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01  # not applied to biases and LayerNorm weights

@dataclass
class ScheduleConfig:
    RANGES: ClassVar[dict[str, str]] = {"warmup_steps": "[0, inf)", "total_steps": "[1, inf)", "min_lr_ratio": "[0, 1]"}

    warmup_steps: int = 0
    decay: Literal["linear", "cosine", "constant"] = "linear"
    total_steps: int | None = None  # end of the decay; defaults to the job's max_steps
    min_lr_ratio: float = 0.0  # lr at total_steps, as a fraction of the peak lr

@dataclass
class EngineConfig:
    RANGES: ClassVar[dict[str, str]] = {"gradient_accumulation_steps": "[1, inf)", "gradient_clipping": "[0, inf)"}

    zero_stage: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0  # 0 disables
    activation_checkpointing: bool = False
    ds_config: Path | None = None  # a DeepSpeed JSON whose sections override the generated ones
    collective_timeout_s: float = 1800.0  # a step (or collective) running longer ends the job; 0: never

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        if self.collective_timeout_s < 0:
            raise ValueError(f"collective_timeout_s must be >= 0, got {self.collective_timeout_s}")

@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str | None = None  # default: sqlite:///{output_dir}/mlflow.db
    experiment: str = "bertscale-pretrain"
    run_name: str | None = None
