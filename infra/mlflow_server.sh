#!/usr/bin/env bash
# Thin wrapper: start the MLflow tracking server (see infra/mlflow_server.py for options).
#   infra/mlflow_server.sh --sqlite runs/mlflow.db --artifacts-destination runs/mlartifacts --port 5000
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bertscale.infra.mlflow_server "$@"
