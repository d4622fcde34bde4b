"""Task heads on bertscale.model.BertModel, with HuggingFace's names (``bert``, ``dropout``, ``classifier``).

State-dict keys equal transformers' BertForSequenceClassification / BertForTokenClassification, so a
pretrain checkpoint's ``bert.*`` tensors load as-is and a fine-tuned model exports key-for-key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertscale.model import IGNORE_INDEX, BertConfig, BertModel, init_weights


@dataclass
class ClassifierOutput:
    """HuggingFace-style output: ``loss`` when labels were given, and the logits."""

    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, num_labels) or (B, T, num_labels)


class BertForSequenceClassification(nn.Module):
    """A linear classifier on the pooled [CLS] output (single sentences or pairs)."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        pooled_output = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, H)
        logits = self.classifier(self.dropout(pooled_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:  # regression, as HuggingFace's problem_type="regression"
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.view(-1))
        return ClassifierOutput(loss, logits)


class BertForTokenClassification(nn.Module):
    """A linear tagger on every token's output; labels of IGNORE_INDEX (-100) are not scored."""

    def __init__(self, config: BertConfig, num_labels: int, classifier_dropout: float | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config, add_pooling_layer=False)  # as HuggingFace: no pooler
        p = config.hidden_dropout_prob if classifier_dropout is None else classifier_dropout
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self.classifier, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassifierOutput:
        sequence_output = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, H)
        logits = self.classifier(self.dropout(sequence_output))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.view(-1, self.num_labels).float(), labels.view(-1), ignore_index=IGNORE_INDEX
            )
        return ClassifierOutput(loss, logits)


HEADS: dict[str, type[BertForSequenceClassification] | type[BertForTokenClassification]] = {
    "sequence_classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
}
