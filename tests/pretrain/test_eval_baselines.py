"""The constant-answer baselines the pretraining eval prints beside MLM and NSP accuracy."""

import pytest
import torch

from bertscale.pretrain.train import majority_baselines


def test_most_frequent_target_and_majority_label_by_hand():
    batches = [
        {
            "labels": torch.tensor([[-100, 7, 7, -100], [3, -100, 7, 9]]),
            "next_sentence_label": torch.tensor([0, 1]),
        },
        {"labels": torch.tensor([[-100, 3, -100, 4]]), "next_sentence_label": torch.tensor([1])},
    ]
    out = majority_baselines(batches, vocab_size=12, device=torch.device("cpu"))
    # targets 7,7,3,7,9,3,4: token 7 is 3 of 7; NSP labels 0,1,1: label 1 is 2 of 3
    assert out["eval_mlm_baseline_accuracy"] == pytest.approx(3 / 7)
    assert out["eval_nsp_baseline_accuracy"] == pytest.approx(2 / 3)
    assert (out["eval_sequences"], out["eval_masked_tokens"]) == (3.0, 7.0)
    assert majority_baselines([], vocab_size=12, device=torch.device("cpu")) == {}
