"""Hostfile generation and SLURM node-list expansion (pure)."""

import re
import subprocess
import sys

import pytest

from bertscale.errors import ConfigError
from bertscale.infra.hostfile import expand_nodelist, hosts_from_env, read_hostfile, render_hostfile


@pytest.mark.parametrize(
    ("nodelist", "expected"),
    [
        ("gpu7", ["gpu7"]),
        ("node[01-03],gpu7", ["node01", "node02", "node03", "gpu7"]),
        ("node[1,3-4]", ["node1", "node3", "node4"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),  # padding follows the lower bound
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("job-[0-1].svc", ["job-0.svc", "job-1.svc"]),
        (" a , b ", ["a", "b"]),
    ],
)
def test_expand_nodelist(nodelist, expected):
    assert expand_nodelist(nodelist) == expected


@pytest.mark.parametrize(
    ("nodelist", "problem"),
    [
        ("node[01-03", "unmatched '['"),
        ("node01-03]", "unmatched ']'"),
        ("n[[1-2]]", "nested"),
        ("n[3-1]", "backwards"),
        ("n[a-b]", "bad range"),
        ("a,,b", "empty entry"),
        ("", "empty entry"),
        ("n[1-2],n2", "listed twice"),
        ("bad;host", "invalid hostname"),
    ],
)
def test_expand_nodelist_rejects(nodelist, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        expand_nodelist(nodelist)


def test_render_hostfile():
    assert render_hostfile(["node01", "node02"], 8) == "node01 slots=8\nnode02 slots=8\n"
    with pytest.raises(ConfigError, match="slots must be >= 1"):
        render_hostfile(["a"], 0)
    with pytest.raises(ConfigError, match="no hosts"):
        render_hostfile([], 1)
    with pytest.raises(ConfigError, match="listed twice"):
        render_hostfile(["a", "a"], 1)
    with pytest.raises(ConfigError, match="invalid hostname"):
        render_hostfile(["a b"], 1)


def test_read_hostfile_roundtrip_and_errors(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# two nodes\nnode01 slots=4\n\nnode02 slots=2  # small one\n")
    assert read_hostfile(path) == [("node01", 4), ("node02", 2)]

    bad = tmp_path / "bad"
    bad.write_text("node01 slots=4\nnode02 gpus=4\n")
    with pytest.raises(ConfigError, match=rf"{bad}:2: expected 'HOST slots=N'"):
        read_hostfile(bad)
    bad.write_text("node01 slots=0\n")
    with pytest.raises(ConfigError, match=r":1: expected"):
        read_hostfile(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="has no hosts"):
        read_hostfile(bad)
    with pytest.raises(ConfigError, match="hostfile not found"):
        read_hostfile(tmp_path / "missing")


def test_hosts_from_slurm_env():
    assert hosts_from_env({"SLURM_JOB_NODELIST": "gpu[1-2]"}) == ["gpu1", "gpu2"]
    assert hosts_from_env({"SLURM_NODELIST": "cpu9"}) == ["cpu9"]
    with pytest.raises(ConfigError, match="SLURM"):
        hosts_from_env({})


@pytest.mark.integration
def test_cli_writes_hostfile_from_slurm_env(tmp_path):
    out = tmp_path / "sub" / "hostfile"
    env = {"SLURM_JOB_NODELIST": "node[01-02]", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.hostfile", "--slots", "2", "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "node01 slots=2\nnode02 slots=2\n"
    assert read_hostfile(out) == [("node01", 2), ("node02", 2)]

    bad = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.hostfile", "--nodelist", "n[1-", "--slots", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: node list 'n[1-': unmatched '['"
