"""`ray job submit` through bertscale.infra.ray_submit against a real, private Ray head on 127.0.0.1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bertscale.config import save_config
from bertscale.errors import ConfigError
from bertscale.infra.ray_submit import local_head, submit, submit_command

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def test_submit_command():
    cmd = submit_command(
        "http://127.0.0.1:8265", ["python", "-m", "bertscale.data_pipeline"], "id1", HERE, 1.0
    )
    assert cmd[1:] == [
        "job", "submit", "--address", "http://127.0.0.1:8265", "--submission-id", "id1",
        "--working-dir", str(HERE), "--entrypoint-num-cpus", "1.0", "--", "python", "-m", "bertscale.data_pipeline",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="no entrypoint"):
        submit_command("http://x", [], "id1")
    with pytest.raises(ConfigError, match="not a directory"):
        submit_command("http://x", ["true"], "id1", HERE / "missing")


@pytest.mark.integration
def test_cli_needs_a_cluster():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.ray_submit", "--", "python", "-c", "pass"],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.startswith("error: no cluster: pass --address")


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.integration
def test_local_head_runs_jobs_and_reports_failure(tmp_path):
    with local_head(num_cpus=2) as head:
        pids = [p.pid for p in _tree(head.process.pid)]
        port = int(head.address.rsplit(":", 1)[1])
        dashboard = [
            conn.laddr
            for p in _tree(head.process.pid)
            for conn in p.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        ]
        assert [addr.ip for addr in dashboard] == ["127.0.0.1"]  # the job API is loopback only

        ok_file, bad_file = tmp_path / "ok.json", tmp_path / "bad.json"
        submission_id, status = submit(
            head.address, ["python", "ray_job.py", str(ok_file)], HERE, timeout=120
        )
        assert submission_id.startswith("bertscale-")
        assert status == "SUCCEEDED"
        record = json.loads(ok_file.read_text())
        assert record["sum"] == sum(i * i for i in range(10))
        assert record["cluster_cpus"] == 2.0  # ran on this head, not on a fresh local instance
        assert Path(record["cwd"]) != HERE  # the working dir was uploaded, not used in place

        _, status = submit(head.address, ["python", "ray_job.py", str(bad_file), "3"], HERE, timeout=120)
        assert status == "FAILED"
        assert bad_file.exists()
    # Stopping the head took its whole process tree with it (and nothing else: no `ray stop`).
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert not head.temp_dir.exists()


@pytest.mark.slow
def test_data_pipeline_as_ray_job(tmp_path, tiny_config):
    config = tmp_path / "pipeline.yaml"
    save_config(tiny_config(tmp_path / "shards"), config)
    with local_head(num_cpus=2) as head:
        _, status = submit(
            head.address,
            ["python", "-m", "bertscale.data_pipeline", "--config", str(config)],
            REPO,
            timeout=300,
        )
    assert status == "SUCCEEDED"
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert sorted((tmp_path / "shards").glob("train-*.tar"))
    assert manifest  # the pipeline wrote its manifest from inside the job


@pytest.mark.slow  # a Ray head start: ~20 s idle; on an overloaded machine Ray's own 30 s raylet
# start-up limit can end the head mid-test ("The current node timed out during startup")
def test_token_auth_refuses_a_client_without_the_token(tmp_path, monkeypatch):
    """A private head with its own token (not ~/.ray/auth_token): requests without it are refused."""
    import secrets
    import urllib.error
    import urllib.request

    from ray._private.authentication_test_utils import reset_auth_token_state  # Ray caches the token

    token = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    reset_auth_token_state()

    def status(headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{head.address}/api/jobs/", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    client = "from ray.job_submission import JobSubmissionClient as C; import sys; C(sys.argv[1]).list_jobs()"
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with local_head(num_cpus=1) as head:
        assert status({}) in (401, 403)  # plain HTTP, no token
        assert status({"Authorization": "Bearer wrong-token"}) in (401, 403)
        assert status({"Authorization": f"Bearer {token}"}) == 200
        for env in (
            {**bare_env, "RAY_AUTH_MODE": "disabled"},  # a client that sends nothing
            {**bare_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong-token"},
        ):
            run = subprocess.run(
                [sys.executable, "-c", client, head.address],
                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            # ray.exceptions.AuthenticationError: "Authentication required: Unauthorized: ..."
            assert run.returncode != 0, run.stderr[-2000:]
            assert any(word in run.stderr for word in ("uthenticat", "Unauthorized", "Forbidden")), run.stderr[-2000:]
        run = subprocess.run(
            [sys.executable, "-c", client, head.address],
            env={**bare_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    monkeypatch.undo()
    reset_auth_token_state()  # later tests read ~/.ray/auth_token again


@pytest.mark.integration
def test_a_cluster_client_without_any_token_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.ray_submit", "--address", "http://127.0.0.1:1",
         "--token-file", str(tmp_path / "missing"), "--", "python", "-c", "pass"],
        env={**env, "HOME": str(tmp_path)}, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr == f"error: --token-file {tmp_path / 'missing'}: missing or empty\n"
    run = subprocess.run(
        [sys.executable, "-m", "bertscale.infra.ray_submit", "--address", "http://127.0.0.1:1", "--", "true"],
        env={**env, "HOME": str(tmp_path)}, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.startswith("error: no Ray auth token: set RAY_AUTH_TOKEN")
