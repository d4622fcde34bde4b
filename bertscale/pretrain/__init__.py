"""BERT pretraining with DeepSpeed ZeRO: model, resumable shard reader, training loop, checkpoints."""
