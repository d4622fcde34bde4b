"""Held-out metrics: accuracy and macro-F1 for sentences, seqeval entity-level P/R/F1 for tags."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from bertscale.masking import IGNORE_INDEX


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> dict:
    """Accuracy and macro-F1 (mean over classes of per-class F1; a class never seen nor predicted is 0)."""
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if pred.shape != gold.shape or gold.size == 0:
        raise ValueError(f"need equal, non-empty predictions and labels, got {pred.shape} and {gold.shape}")
    f1s = []
    for c in range(num_labels):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return {"accuracy": float(np.mean(pred == gold)), "macro_f1": float(np.mean(f1s))}


def entity_metrics(predictions: list[list[str]], labels: list[list[str]]) -> dict:
    """Entity-level precision/recall/F1 (seqeval's default, conlleval-compatible: an entity counts
    only with its exact span and type), plus the accuracy of word tags."""
    kw = {"zero_division": 0}
    return {
        "precision": float(precision_score(labels, predictions, **kw)),
        "recall": float(recall_score(labels, predictions, **kw)),
        "f1": float(f1_score(labels, predictions, **kw)),
        "token_accuracy": float(np.mean(_flat(predictions) == _flat(labels))),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], label_names: Sequence[str]) -> dict:
    """Mean loss and the task's metrics over ``batches`` (model put in eval mode, then restored)."""
    was_training = model.training
    model.eval()
    token_level = False
    total_loss, total_n = 0.0, 0
    preds: list = []
    golds: list = []
    device = next(model.parameters()).device
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        labels = batch["labels"]
        token_level = labels.dim() == 2
        n = int((labels != IGNORE_INDEX).sum()) if token_level else labels.numel()
        total_loss += float(out.loss) * n
        total_n += n
        predicted = out.logits.argmax(-1)
        if token_level:
            for p_row, g_row in zip(predicted.cpu(), labels.cpu(), strict=True):
                keep = g_row != IGNORE_INDEX  # first sub-token of each word
                preds.append([label_names[i] for i in p_row[keep].tolist()])
                golds.append([label_names[i] for i in g_row[keep].tolist()])
        else:
            preds += predicted.cpu().tolist()
            golds += labels.cpu().tolist()
    model.train(was_training)
    if total_n == 0:
        raise ValueError("evaluate() got no labelled examples")
    metrics = (
        entity_metrics(preds, golds)
        if token_level
        else classification_metrics(preds, golds, len(label_names))
    )
    return {"loss": total_loss / total_n, **metrics}


def _flat(rows: list[list[str]]) -> np.ndarray:
    return np.array([tag for row in rows for tag in row], dtype=object)
