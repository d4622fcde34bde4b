#!/usr/bin/env bash
# Install everything, then run the test suite (CPU only; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check .
# DeepSpeed JIT-builds its CPU comm op on first use, under a lock file. Build it once here, in a
# directory of this checkout, so test processes never race for (or inherit a stale) lock in ~/.cache.
export TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions"
python -c "from deepspeed.ops.op_builder import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)"
python -m pytest "$@"
