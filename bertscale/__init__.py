"""Shared core of bertscale: typed configs, user-facing errors and atomic file writes.

The product packages (data_pipeline, pretrain, finetune, infra) build on these few pieces so that
none of them re-implements config parsing or crash-safe writes.
"""

import os

# OpenMP threads waiting for work spin for 300,000 iterations by default (libgomp, which torch's CPU
# wheels use). A process whose cores are shared with other busy processes then crawls: a 2-thread
# tiny-BERT step took 0.30 s with the default beside two busy processes, 0.044-0.055 s spinning
# 1,000 iterations, the same 0.021 s as the default on an idle host (README, "CPU threads").
# Set before torch loads OpenMP, which reads it once; a user's own wait settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
