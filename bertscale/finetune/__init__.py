"""Fine-tuning of pretrained bertscale encoders: sentence classification and token tagging (NER)."""
