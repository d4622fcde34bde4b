"""Shared core of bertscale: typed configs, user-facing errors and atomic file writes.

The product packages (data_pipeline, pretrain, finetune, infra) build on these few pieces so that
none of them re-implements config parsing or crash-safe writes.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning. With spinning (the default) a CPU
# process whose cores are shared with any other busy process slows down 30x: measured 1.08 vs 0.036
# s per tiny-BERT step at 2 threads beside one other process (README, "CPU threads"). Set before
# torch loads OpenMP, which reads it once; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
