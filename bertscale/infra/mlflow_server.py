"""Start an MLflow tracking server (UI + REST API) on a SQLite file or a Postgres database.

Binds 127.0.0.1 by default: reach it through an ssh tunnel (``ssh -L 5000:127.0.0.1:5000 head``)
or pass ``--host 0.0.0.0`` deliberately (a warning is printed; also set ``--allowed-hosts``).
A database URI with a password is read from an environment variable, handed to the server through
its environment (not its argv, which ``ps`` shows to every user), and redacted in everything printed.
Artifacts are proxied by the server (``mlflow-artifacts:/``) to ``--artifacts-destination``.

    python -m bertscale.infra.mlflow_server --sqlite runs/mlflow.db --artifacts-destination runs/mlartifacts
    MLFLOW_DB_URI=postgresql://user:pw@db/mlflow python -m bertscale.infra.mlflow_server --backend-uri-env MLFLOW_DB_URI
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bertscale.errors import BertscaleError, ConfigError, run_cli
from bertscale.ports import LOOPBACK
from bertscale.secrets import redact, redact_uri


@dataclass
class MlflowServerConfig:
    backend_uri: str  # sqlite:///abs/path.db or postgresql://... (may hold a password)
    artifacts_destination: str  # local directory or object-store URI the server proxies to
    host: str = LOOPBACK
    port: int = 5000
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)  # passed through to `mlflow server`
    job_execution: bool = False  # MLflow's background job runner (GenAI features)

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        host = LOOPBACK if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"


def sqlite_uri(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_command(cfg: MlflowServerConfig) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` argv and the extra environment holding the backend URI."""
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {cfg.port}")
    if cfg.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {cfg.workers}")
    scheme = urlsplit(cfg.backend_uri).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql", "file"):
        raise ConfigError(
            f"backend store {redact_uri(cfg.backend_uri)!r}: expected sqlite:/// or postgresql://"
        )
    destination = cfg.artifacts_destination
    if "://" not in destination:  # a local directory: absolute, so the server's cwd does not matter
        destination = str(Path(destination).expanduser().resolve())
        Path(destination).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server"]
    cmd += ["--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers)]
    cmd += ["--serve-artifacts", "--artifacts-destination", destination, *cfg.extra_args]
    # click reads --backend-store-uri from this variable; keeping it out of argv keeps it out of `ps`.
    env = {"MLFLOW_BACKEND_STORE_URI": cfg.backend_uri}
    # The job runner (a huey consumer for GenAI evaluation jobs) costs a process and start-up time
    # and is not used by training runs.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "true" if cfg.job_execution else "false"
    return cmd, env


def start_server(cfg: MlflowServerConfig, log_path: str | Path | None = None) -> subprocess.Popen:
    """Launch the server in its own process group (so :func:`stop_server` takes its workers too)."""
    if not is_loopback(cfg.host):
        print(
            f"warning: MLflow server binds {cfg.host}: anyone who can reach this machine can read and write "
            "runs; restrict with --allowed-hosts and a firewall",
            file=sys.stderr,
        )
    cmd, env = server_command(cfg)
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 (owned by the child)
    try:
        return subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            start_new_session=True,
        )
    finally:
        if log is not None:
            log.close()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll ``/health`` until it answers OK; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BertscaleError(f"mlflow server exited with code {proc.returncode} before becoming healthy")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise BertscaleError(f"mlflow server at {url} not healthy after {timeout:.0f}s")


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_server(
    cfg: MlflowServerConfig, log_path: str | Path | None = None, timeout: float = 60.0
) -> Iterator[subprocess.Popen]:
    """Start the server, wait until healthy, yield the process; always stop it."""
    proc = start_server(cfg, log_path)
    try:
        wait_healthy(cfg.url, proc, timeout)
        yield proc
    finally:
        stop_server(proc)


def backend_from_args(sqlite: str | None, uri_env: str | None, env: Mapping[str, str]) -> str:
    if uri_env:
        uri = env.get(uri_env, "")
        if not uri:
            raise ConfigError(f"--backend-uri-env {uri_env}: environment variable ${uri_env} is not set")
        return uri
    return sqlite_uri(sqlite or "mlflow.db")


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.infra.mlflow_server", description=__doc__.splitlines()[0]
    )
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--sqlite", help="SQLite database file (default: ./mlflow.db)")
    backend.add_argument("--backend-uri-env", help="name of the env var holding a postgresql:// URI")
    parser.add_argument("--artifacts-destination", default="mlartifacts", help="artifact dir or s3:// URI")
    parser.add_argument("--host", default=LOOPBACK, help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--job-execution", action="store_true", help="run MLflow's background job runner")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = parser.parse_args(argv[:split])
    cfg = MlflowServerConfig(
        backend_uri=backend_from_args(args.sqlite, args.backend_uri_env, os.environ),
        artifacts_destination=args.artifacts_destination,
        host=args.host,
        port=args.port,
        workers=args.workers,
        job_execution=args.job_execution,
        extra_args=argv[split + 1 :],
    )
    cmd, _ = server_command(cfg)
    print(f"backend store: {redact_uri(cfg.backend_uri)}\n$ {redact(shlex.join(cmd))}", flush=True)
    # A scheduler's SIGTERM unwinds like Ctrl-C, so running_server's cleanup stops the server.
    signal.signal(signal.SIGTERM, _interrupt)
    with running_server(cfg, timeout=args.timeout) as proc, contextlib.suppress(KeyboardInterrupt):
        print(f"MLflow UI: {cfg.url}  (export MLFLOW_TRACKING_URI={cfg.url})", flush=True)
        proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
