"""Shared core of bertscale: typed configs, user-facing errors and atomic file writes.

The product packages (data_pipeline, pretrain, finetune, infra) build on these few pieces so that
none of them re-implements config parsing or crash-safe writes.
"""
