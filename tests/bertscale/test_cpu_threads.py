"""Importing bertscale before torch shortens how long idle OpenMP threads spin (GOMP_SPINCOUNT 1000).

libgomp prints its settings at load under OMP_DISPLAY_ENV=verbose: the spin count it uses is the
observable."""

import os
import subprocess
import sys

import pytest


def gomp_setting(code: str, name: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, "OMP_DISPLAY_ENV": "verbose", **env},
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    line = next((x for x in out.stderr.splitlines() if x.strip().startswith(f"{name} =")), None)
    if line is None:
        pytest.skip("torch's OpenMP runtime is not libgomp: it does not display its settings")
    return line.split("=", 1)[1].strip().strip("'")


@pytest.mark.integration
def test_idle_threads_spin_briefly_after_importing_bertscale():
    assert gomp_setting("import torch", "GOMP_SPINCOUNT") == "300000"  # torch alone: libgomp's default
    assert gomp_setting("import bertscale.model", "GOMP_SPINCOUNT") == "1000"


@pytest.mark.integration
@pytest.mark.parametrize(
    "env, expected",
    [({"GOMP_SPINCOUNT": "50000"}, "50000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "0")],
)
def test_a_users_own_wait_setting_wins(env, expected):
    assert gomp_setting("import bertscale.model", "GOMP_SPINCOUNT", **env) == expected
