"""Importing bertscale before torch makes idle OpenMP threads sleep (GOMP_SPINCOUNT 0), not spin.

libgomp prints its settings at load under OMP_DISPLAY_ENV=verbose: the spin count it actually uses
is the observable (its OMP_WAIT_POLICY line reads PASSIVE whether or not the policy was set)."""

import os
import subprocess
import sys

import pytest


def gomp_setting(code: str, name: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, "OMP_DISPLAY_ENV": "verbose", **env},
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    line = next((x for x in out.stderr.splitlines() if x.strip().startswith(f"{name} =")), None)
    if line is None:
        pytest.skip("torch's OpenMP runtime is not libgomp: it does not display its settings")
    return line.split("=", 1)[1].strip().strip("'")


@pytest.mark.integration
def test_threads_sleep_when_idle_after_importing_bertscale():
    assert gomp_setting("import torch", "GOMP_SPINCOUNT") != "0"  # torch alone spins
    assert gomp_setting("import bertscale.model", "GOMP_SPINCOUNT") == "0"


@pytest.mark.integration
def test_a_users_wait_policy_wins():
    assert gomp_setting("import bertscale.model", "OMP_WAIT_POLICY", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"
