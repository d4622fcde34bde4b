"""Submit a job (e.g. the data pipeline) to a Ray cluster with ``ray job submit`` and wait for it.

Against a running cluster (the dashboard's job API, usually reached through
``ray dashboard infra/ray/cluster.yaml``, which tunnels it to 127.0.0.1:8265):

    python -m bertscale.infra.ray_submit --address http://127.0.0.1:8265 -- python -m bertscale.data_pipeline --config C

Or on one machine, against a throw-away local head bound to 127.0.0.1 (stopped afterwards):

    python -m bertscale.infra.ray_submit --local-head --num-cpus 2 -- python -m bertscale.data_pipeline --config C

The exit status is 0 only if the job ends SUCCEEDED.

Ray's token authentication is always on (``RAY_AUTH_MODE=token``, Ray >= 2.52): every request to
the job API and the GCS carries the cluster's token, read from ``RAY_AUTH_TOKEN``, from
``--token-file`` (or ``RAY_AUTH_TOKEN_PATH``) or from ``~/.ray/auth_token``; it is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from bertscale.errors import BertscaleError, ConfigError, run_cli
from bertscale.ports import LOOPBACK, free_port


@dataclass
class LocalHead:
    """A single-node Ray head started by :func:`start_local_head`."""

    process: subprocess.Popen  # `ray start --head --block`: its exit tears the whole node down
    address: str  # job API, e.g. http://127.0.0.1:8265
    gcs_address: str  # what `ray.init(address=...)` / worker nodes join
    temp_dir: Path


def use_token_auth(token_file: Path | None = None, require: bool = True) -> None:
    """Turn on Ray token auth for this process and the Ray processes it starts; with ``require``
    (joining a running cluster), check that a token exists; a new local head generates one.
    ``token_file`` wins over the other sources. The token's value is never printed."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if token_file is not None:
        if not token_file.is_file() or not token_file.read_text(encoding="utf-8").strip():
            raise ConfigError(f"--token-file {token_file}: missing or empty")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file.resolve())
        os.environ.pop("RAY_AUTH_TOKEN", None)  # Ray would prefer it over the file
    if os.environ["RAY_AUTH_MODE"] != "token" or not require:
        return  # RAY_AUTH_MODE=disabled: the user turned it off deliberately
    if not (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        raise ConfigError(
            "no Ray auth token: set RAY_AUTH_TOKEN, pass --token-file, or run `ray get-auth-token --generate`"
        )


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else (shutil.which("ray") or "ray")


def head_command(num_cpus: int, temp_dir: Path, gcs_port: int, dashboard_port: int) -> list[str]:
    """``ray start --head`` on loopback, every port explicit so heads of several users do not collide."""
    cmd = [_ray_executable(), "start", "--head", "--block", "--disable-usage-stats"]
    cmd += ["--node-ip-address", LOOPBACK, "--port", str(gcs_port), "--num-cpus", str(num_cpus)]
    cmd += [
        "--include-dashboard",
        "true",
        "--dashboard-host",
        LOOPBACK,
        "--dashboard-port",
        str(dashboard_port),
    ]
    # A private temp dir also keeps the head out of /tmp/ray/ray_current_cluster, so an unrelated
    # `ray.init()` on this machine does not silently attach to it.
    cmd += ["--temp-dir", str(temp_dir)]
    for flag in (
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
        "--node-manager-port",
        "--object-manager-port",
    ):
        cmd += [flag, str(free_port())]
    return cmd


def start_local_head(
    num_cpus: int = 2, timeout: float = 180.0, log_path: str | Path | None = None
) -> LocalHead:
    """Start a Ray head on 127.0.0.1 in its own process group and wait until its job API answers."""
    # Short path under /tmp: Ray's unix socket paths are length-capped.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray_", dir="/tmp"))
    gcs_port, dashboard_port = free_port(), free_port()
    cmd = head_command(num_cpus, temp_dir, gcs_port, dashboard_port)
    # Ray's token auth (token in ~/.ray/auth_token, generated if missing): the head requires it and
    # this process, which talks to the head, must send it. Set here so both sides agree.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Jobs run `python ...` from PATH: make that this interpreter's environment.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    # Metrics ports are fixed by default (44217, 44227): a second head on the machine would collide.
    env["AUTOSCALER_METRIC_PORT"], env["DASHBOARD_METRIC_PORT"] = str(free_port()), str(free_port())
    log_path = Path(log_path or temp_dir / "head.log")
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = LocalHead(proc, f"http://{LOOPBACK}:{dashboard_port}", f"{LOOPBACK}:{gcs_port}", temp_dir)
    try:
        wait_for_job_server(head.address, timeout, proc)
    except BertscaleError as err:
        tail = log_path.read_text(errors="replace")[-1500:]  # read before the temp dir goes
        stop_local_head(head)
        raise BertscaleError(f"{err}; head log ends:\n{tail}") from None
    except BaseException:
        stop_local_head(head)
        raise
    return head


def wait_for_job_server(address: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BertscaleError(f"ray head exited with code {proc.returncode}")
        try:
            JobSubmissionClient(address).list_jobs()  # also checks the auth token and version
            return
        except Exception as err:  # connection refused / dashboard still starting
            if "uthenticat" in str(err):  # a missing/wrong token will not fix itself
                raise BertscaleError(f"Ray job API at {address}: {str(err).splitlines()[0]}") from None
            if time.monotonic() > deadline:
                raise BertscaleError(f"Ray job API at {address} not up after {timeout:.0f}s: {err}") from None
        time.sleep(1.0)


def stop_local_head(head: LocalHead, grace: float = 30.0) -> None:
    """Stop only this head: SIGTERM its `ray start --block` (which stops its node), then its group.

    Deliberately not `ray stop`, which kills every Ray process of the user on the machine.
    """
    try:  # snapshot the tree first: Ray daemons that start their own session escape killpg
        tree = psutil.Process(head.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        head.process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.process.pid, signal.SIGKILL)  # stragglers of this head's group only
    head.process.wait()
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(tree, timeout=grace)  # gone, not merely signalled, when this returns
    shutil.rmtree(head.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_head(num_cpus: int = 2, timeout: float = 180.0) -> Iterator[LocalHead]:
    head = start_local_head(num_cpus, timeout)
    try:
        yield head
    finally:
        stop_local_head(head)


def submit_command(
    address: str,
    entrypoint: Sequence[str],
    submission_id: str,
    working_dir: str | Path | None = ".",
    entrypoint_num_cpus: float | None = None,
) -> list[str]:
    if not entrypoint:
        raise ConfigError(
            "no entrypoint: give the command after '--' (e.g. -- python -m bertscale.data_pipeline ...)"
        )
    cmd = [_ray_executable(), "job", "submit", "--address", address, "--submission-id", submission_id]
    if working_dir is not None:
        if not Path(working_dir).is_dir():
            raise ConfigError(f"--working-dir {working_dir}: not a directory")
        cmd += ["--working-dir", str(working_dir)]
    if entrypoint_num_cpus is not None:
        cmd += ["--entrypoint-num-cpus", str(entrypoint_num_cpus)]
    return [*cmd, "--", *entrypoint]


def submit(
    address: str,
    entrypoint: Sequence[str],
    working_dir: str | Path | None = ".",
    timeout: float | None = None,
    entrypoint_num_cpus: float | None = None,
) -> tuple[str, str]:
    """Run ``ray job submit`` (streams the job's logs), return ``(submission_id, final status)``.

    The status is read back from the job API, not inferred from the CLI's exit code; a job still
    running at ``timeout`` is stopped and reported as such.
    """
    from ray.job_submission import JobSubmissionClient

    submission_id = f"bertscale-{uuid.uuid4().hex[:12]}"
    cmd = submit_command(address, entrypoint, submission_id, working_dir, entrypoint_num_cpus)
    print(f"$ {shlex.join(cmd)}", flush=True)
    try:
        subprocess.run(cmd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"job {submission_id} still running after {timeout:.0f}s: stopping it", file=sys.stderr)
        JobSubmissionClient(address).stop_job(submission_id)
    client = JobSubmissionClient(address)
    status = client.get_job_status(submission_id)
    while not status.is_terminal():  # the CLI returns when the job ends; this covers a stop in flight
        time.sleep(1.0)
        status = client.get_job_status(submission_id)
    return submission_id, str(status.value)


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.infra.ray_submit",
        usage="%(prog)s (--address URL | --local-head) [options] -- ENTRYPOINT ...",
        description=__doc__.splitlines()[0],
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--address", help="job API of the cluster (default: $RAY_ADDRESS)")
    where.add_argument("--local-head", action="store_true", help="start a private head on 127.0.0.1 first")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local head")
    parser.add_argument("--working-dir", default=".", help="directory uploaded as the job's cwd")
    parser.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the driver")
    parser.add_argument("--timeout", type=float, help="stop the job after this many seconds")
    parser.add_argument(
        "--token-file", type=Path, help="Ray auth token file (default: $RAY_AUTH_TOKEN, ~/.ray/auth_token)"
    )
    args = parser.parse_args(argv[:split])
    entrypoint = argv[split + 1 :]
    use_token_auth(args.token_file, require=not args.local_head)

    with contextlib.ExitStack() as stack:
        if args.local_head:
            head = stack.enter_context(local_head(args.num_cpus))
            print(f"local Ray head: job API {head.address}, GCS {head.gcs_address}", flush=True)
            address = head.address
        else:
            address = args.address or os.environ.get("RAY_ADDRESS", "")
            if not address:
                raise ConfigError(
                    "no cluster: pass --address http://HEAD:8265 (or set RAY_ADDRESS) or --local-head"
                )
        submission_id, status = submit(
            address, entrypoint, args.working_dir, args.timeout, args.entrypoint_num_cpus
        )
    print(f"job {submission_id}: {status}", flush=True)
    if status != "SUCCEEDED":
        raise SystemExit(1)


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
