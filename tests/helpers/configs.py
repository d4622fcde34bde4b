"""The tiny pretraining run the launcher tests share: 2 layers, hidden 64, micro batch 8, ZeRO-2."""

from __future__ import annotations

import copy
from typing import Any

import yaml

TINY_PRETRAIN: dict[str, Any] = {
    "model": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    },
    "data": {"micro_batch_size": 8, "masking": "dynamic", "num_workers": 1},
    "optimizer": {"lr": 3e-3},
    "schedule": {"warmup_steps": 2},
    "engine": {"zero_stage": 2},
    "metrics": {"log_every": 1},
    "mlflow": {"enabled": False},
}


def tiny_pretrain_yaml(**sections: Any) -> str:
    """TINY_PRETRAIN with ``sections`` merged in (a dict updates that section, a scalar sets a key)."""
    config = copy.deepcopy(TINY_PRETRAIN)
    for key, value in sections.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return yaml.safe_dump(config, sort_keys=False)
