"""Metrics on hand-computed examples, and evaluate() on a real head."""

import pytest
import torch

from bertscale.finetune.data import Features, eval_batches
from bertscale.finetune.evaluate import classification_metrics, entity_metrics, evaluate
from bertscale.finetune.heads import BertForSequenceClassification, BertForTokenClassification
from bertscale.model import BertConfig

TINY = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
)


def test_classification_metrics_by_hand():
    # class 0: tp=2 fp=1 fn=0 -> f1 0.8; class 1: tp=1 fp=0 fn=1 -> f1 2/3; class 2: absent -> 0
    m = classification_metrics([0, 0, 1, 0], [0, 0, 1, 1], num_labels=3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)
    with pytest.raises(ValueError):
        classification_metrics([], [], 2)


def test_entity_metrics_known_example():
    # seqeval's README example: 2 gold entities (MISC, PER), 2 predicted; only PER matches exactly
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    m = entity_metrics(pred, gold)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["token_accuracy"] == pytest.approx(8 / 10)  # positions 2 and 3 differ
    # a type error on a correct span is a miss; an extra entity costs precision only
    m = entity_metrics([["B-LOC", "O", "B-PER"]], [["B-PER", "O", "B-PER"]])
    assert (m["precision"], m["recall"]) == (pytest.approx(0.5), pytest.approx(0.5))
    m = entity_metrics([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    assert (m["precision"], m["recall"]) == (pytest.approx(0.5), pytest.approx(1.0))


def test_evaluate_sequence_head_matches_manual_argmax():
    torch.manual_seed(0)
    model = BertForSequenceClassification(TINY, num_labels=2)
    features = [Features([2, 5 + i, 6 + i % 3, 3], [0, 0, 0, 0], i % 2) for i in range(9)]
    m = evaluate(model, eval_batches(features, 4, 0), ["neg", "pos"])
    assert model.training, "evaluate() must restore train mode"
    model.eval()
    with torch.no_grad():
        batch = next(eval_batches(features, 9, 0))
        out = model(**batch)
    assert m["accuracy"] == pytest.approx((out.logits.argmax(-1) == batch["labels"]).float().mean().item())
    assert m["loss"] == pytest.approx(out.loss.item(), rel=1e-5)


def test_evaluate_token_head_scores_first_subtokens_only():
    torch.manual_seed(0)
    model = BertForTokenClassification(TINY, num_labels=3)
    features = [
        Features([2, 7, 8, 9, 3], [0] * 5, [-100, 1, -100, 0, -100]),
        Features([2, 10, 3], [0] * 3, [-100, 2, -100]),
    ]
    m = evaluate(model, eval_batches(features, 2, 0), ["O", "B-PER", "I-PER"])
    assert set(m) == {"loss", "precision", "recall", "f1", "token_accuracy"}
    assert 0.0 <= m["f1"] <= 1.0 and m["token_accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)
