"""Heads: shapes, losses, and elementwise parity with transformers' heads loaded with the same weights."""

import pytest
import torch
import torch.nn.functional as F

from bertscale.finetune.heads import BertForSequenceClassification, BertForTokenClassification
from bertscale.model import BertConfig

transformers = pytest.importorskip("transformers")

TINY = BertConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, TINY.vocab_size, (3, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # padding, so the unpadded path runs
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 5:] = 1
    return input_ids, attention_mask, token_type_ids


def _hf(cls_name: str, ours: torch.nn.Module, num_labels: int):
    hf_config = transformers.BertConfig(**TINY.to_hf_dict(), num_labels=num_labels)
    hf = getattr(transformers, cls_name)(hf_config).eval()
    ours_sd, hf_sd = ours.state_dict(), hf.state_dict()
    assert set(ours_sd) == set(hf_sd), set(ours_sd) ^ set(hf_sd)
    hf.load_state_dict(ours_sd)
    return hf


@pytest.mark.parametrize("unpad", [True, False])
def test_sequence_classification_matches_transformers(unpad):
    torch.manual_seed(0)
    config = BertConfig(**{**TINY.__dict__, "unpad": unpad})
    ours = BertForSequenceClassification(config, num_labels=3).eval()
    hf = _hf("BertForSequenceClassification", ours, 3)
    input_ids, attention_mask, token_type_ids = _batch()
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        out = ours(input_ids, attention_mask, token_type_ids, labels=labels)
        ref = hf(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels
        )
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unpad", [True, False])
def test_token_classification_matches_transformers(unpad):
    torch.manual_seed(1)
    config = BertConfig(**{**TINY.__dict__, "unpad": unpad})
    ours = BertForTokenClassification(config, num_labels=5).eval()
    assert not any(k.startswith("bert.pooler") for k in ours.state_dict())  # as HF: no pooler
    hf = _hf("BertForTokenClassification", ours, 5)
    input_ids, attention_mask, token_type_ids = _batch(1)
    labels = torch.randint(0, 5, input_ids.shape, generator=torch.Generator().manual_seed(2))
    labels[attention_mask == 0] = -100
    labels[:, 0] = -100
    with torch.no_grad():
        out = ours(input_ids, attention_mask, token_type_ids, labels=labels)
        ref = hf(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels
        )
    assert out.logits.shape == (3, 10, 5)
    real = attention_mask.bool()  # our unpadded path zeroes pad positions; HF computes junk there
    torch.testing.assert_close(out.logits[real], ref.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_losses_are_cross_entropy_over_scored_positions_and_train_all_parameters():
    torch.manual_seed(0)
    model = BertForTokenClassification(TINY, num_labels=4)
    input_ids, attention_mask, token_type_ids = _batch()
    labels = torch.full(input_ids.shape, -100)
    labels[0, 1], labels[1, 2] = 3, 1
    model.eval()
    out = model(input_ids, attention_mask, token_type_ids, labels=labels)
    expected = F.cross_entropy(torch.stack([out.logits[0, 1], out.logits[1, 2]]), torch.tensor([3, 1]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["classifier.weight"].abs().sum() > 0
    assert grads["bert.embeddings.word_embeddings.weight"].abs().sum() > 0  # the encoder trains too
    assert grads["bert.encoder.layer.0.attention.self.qkv.weight"].abs().sum() > 0


def test_no_labels_no_loss_and_regression_head():
    model = BertForSequenceClassification(TINY, num_labels=1).eval()
    input_ids, attention_mask, _ = _batch()
    assert model(input_ids, attention_mask).loss is None
    out = model(input_ids, attention_mask, labels=torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0, 2.0])))


def test_classifier_dropout_overrides_hidden_dropout():
    assert BertForSequenceClassification(TINY, 2).dropout.p == TINY.hidden_dropout_prob
    assert BertForTokenClassification(TINY, 2, classifier_dropout=0.3).dropout.p == 0.3
