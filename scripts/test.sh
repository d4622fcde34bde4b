#!/usr/bin/env bash
# Install everything, then run the test suite (CPU only; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
ruff check .
python -m pytest "$@"
