"""A short model card (``README.md``) for an exported checkpoint: what it is and what it was trained on.

Read from what the checkpoint directory already holds: ``trainer_state.json`` (step, tokens seen),
``config.yaml`` (the shards it trained on: their ``manifest.json`` digest, tokenizer, inputs) and the
run's ``metrics.jsonl`` (the last evaluation at or before that step). Anything missing is said to be
unknown rather than guessed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from bertscale.data_pipeline.schema import MANIFEST_NAME
from bertscale.model import TIED_WEIGHTS
from bertscale.model_dir import Pretrained


def model_card(pretrained: Pretrained, source: Path) -> str:
    config, step_dir = pretrained.config, pretrained.step_dir
    state = _json(step_dir / "trainer_state.json") or {}
    run = _yaml(step_dir / "config.yaml") or {}
    shards = Path(str((run.get("data") or {}).get("shards", ""))) if run.get("data") else None
    manifest_path = shards / MANIFEST_NAME if shards else None
    manifest = _json(manifest_path) if manifest_path else None
    heads = any(key.startswith("cls.") and key not in TIED_WEIGHTS for key in pretrained.state_dict)
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'fill-mask' if heads else 'feature-extraction'}",
        "tags: [bert, bertscale]",
        "---",
        "",
        f"# BERT ({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size})",
        "",
        f"Exported by `python -m bertscale.finetune.export --to-hf {source}`: "
        f"{'BertForPreTraining (MLM + NSP heads)' if heads else 'BertModel (encoder only)'}.",
        "",
        "| | |",
        "|---|---|",
        f"| optimizer steps | {state.get('step', 'unknown')} |",
        f"| tokens seen | {_count(state.get('tokens'))} |",
        f"| world size | {state.get('world_size', 'unknown')} |",
        f"| initialised from | {(run.get('checkpoint') or {}).get('init_from') or 'random init'} |",
    ]
    if manifest is not None and manifest_path is not None:
        digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        inputs = manifest.get("inputs", {})
        lines += [
            f"| data manifest sha256 | `{digest}` |",
            f"| data | {_count(inputs.get('documents'))} documents, {_count(inputs.get('tokens'))} tokens, "
            f"max_seq_length {manifest.get('max_seq_length')} |",
            f"| tokenizer | {manifest.get('tokenizer_kind', 'sentencepiece')}, vocab {manifest.get('vocab_size')}, "
            f"sha256 `{manifest.get('tokenizer_sha256', '')[:16]}…` |",
        ]
    else:
        lines.append("| data manifest | unknown (not beside this checkpoint) |")
    for name, value in sorted(_last_eval(step_dir, state.get("step")).items()):
        lines.append(f"| {name} | {value:.4f} |")
    lines += [
        "",
        "```python",
        "from transformers import pipeline",
        'pipeline("fill-mask", model="PATH")("The capital of France is [MASK].")'
        if heads
        else 'pipeline("feature-extraction", model="PATH")("A sentence to encode.")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _last_eval(step_dir: Path, step: Any) -> dict[str, float]:
    """The run's last ``eval_*`` metrics logged at or before ``step`` (run dir = step dir's grandparent)."""
    path = step_dir.parent.parent / "metrics.jsonl"
    found: dict[str, float] = {}
    if not path.is_file() or not isinstance(step, int):
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            found.update({k: float(v) for k, v in record.items() if k.startswith("eval_")})
    return found


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown"
