"""Build (and exec) the ``deepspeed`` launcher command for one node of a multi-node job.

Two ways to start a multi-node DeepSpeed job:

* ``ssh``: run once on node 0; the launcher ssh-es (pdsh) into every host of the hostfile.
* ``no_ssh``: run once per node (what SLURM ``srun`` and Kubernetes pods do); each node passes its
  ``--node_rank`` and all agree on ``--master_addr``/``--master_port`` (node 0 of the hostfile).

The hostfile comes from ``--hostfile``, ``--hosts``/``--nodelist`` or the SLURM environment;
the node rank from ``--node_rank`` or ``SLURM_NODEID`` / ``JOB_COMPLETION_INDEX`` / ``NODE_RANK``.

    python -m bertscale.infra.launch --no_ssh --slots 8 -- --module bertscale.pretrain \
        --config bertscale/pretrain/configs/bert_base_phase1.yaml
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from bertscale.atomic import atomic_write_text
from bertscale.errors import ConfigError, run_cli
from bertscale.infra.hostfile import read_hostfile, render_hostfile, select_hosts

DEFAULT_MASTER_PORT = 29500
# Where each scheduler tells a process which node it is on, in the order they are tried.
NODE_RANK_ENV = ("SLURM_NODEID", "JOB_COMPLETION_INDEX", "NODE_RANK")


def node_rank_from_env(env: Mapping[str, str]) -> int | None:
    for name in NODE_RANK_ENV:
        value = env.get(name, "")
        if value:
            if not value.isdigit():
                raise ConfigError(f"${name}={value!r} is not a node rank (expected an integer >= 0)")
            return int(value)
    return None


def deepspeed_command(
    hostfile: str | Path,
    num_nodes: int,
    program: Sequence[str],
    *,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    no_ssh: bool = False,
    node_rank: int | None = None,
    num_accelerators: int | None = None,
    deepspeed: str = "deepspeed",
) -> list[str]:
    """The launcher command line; ``program`` is what follows it (``--module bertscale.pretrain --config ...``)."""
    if not program:
        raise ConfigError(
            "nothing to launch: give the program after '--' (e.g. -- --module bertscale.pretrain ...)"
        )
    if not 1 <= master_port <= 65535:
        raise ConfigError(f"--master_port must be in 1..65535, got {master_port}")
    if num_accelerators is not None and num_accelerators < 1:
        raise ConfigError(f"--num_accelerators must be >= 1, got {num_accelerators}")
    cmd = [deepspeed, "--hostfile", str(hostfile), "--num_nodes", str(num_nodes)]
    if num_accelerators is not None:
        cmd += ["--num_accelerators", str(num_accelerators)]
    if no_ssh:
        if node_rank is None:
            raise ConfigError(f"--no_ssh needs a node rank: pass --node_rank or set one of {NODE_RANK_ENV}")
        if not 0 <= node_rank < num_nodes:
            raise ConfigError(f"node rank {node_rank} is outside 0..{num_nodes - 1} ({num_nodes} nodes)")
        cmd += ["--no_ssh", "--node_rank", str(node_rank)]
    cmd += ["--master_addr", master_addr, "--master_port", str(master_port)]
    return cmd + list(program)


def _resolve_hostfile(args: argparse.Namespace) -> tuple[Path, list[tuple[str, int]]]:
    """Use the given hostfile, or write one from --hosts / --nodelist / SLURM."""
    if args.hostfile:
        return Path(args.hostfile), read_hostfile(args.hostfile)
    if args.slots is None:
        slots = os.environ.get("SLURM_GPUS_ON_NODE", "")
        if not slots.isdigit():
            raise ConfigError("--slots (ranks per node) is needed to write a hostfile")
        args.slots = int(slots)
    hosts = select_hosts(args.hosts, args.nodelist)
    text = render_hostfile(hosts, args.slots)
    if args.write_hostfile:
        path = Path(args.write_hostfile)
    elif args.dry_run:  # show it, leave no file behind
        print("".join(f"# hostfile: {line}\n" for line in text.splitlines()), end="")
        return Path("hostfile"), [(host, args.slots) for host in hosts]
    else:
        fd, name = tempfile.mkstemp(prefix="bertscale-hostfile-")
        os.close(fd)
        path = Path(name)
    atomic_write_text(path, text)
    return path, [(host, args.slots) for host in hosts]


def _deepspeed_executable() -> str:
    # Prefer the launcher installed beside this interpreter (a venv not on PATH still works).
    beside = Path(sys.executable).parent / "deepspeed"
    return str(beside) if beside.is_file() else (shutil.which("deepspeed") or "deepspeed")


def main(argv: Sequence[str]) -> None:
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, program = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.infra.launch",
        usage="%(prog)s [options] -- --module bertscale.pretrain --config CONFIG [key=value ...]",
        description=__doc__.splitlines()[0],
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hostfile", help="existing hostfile ('host slots=N' lines)")
    source.add_argument("--hosts", nargs="+", help="hostnames, node 0 first (a hostfile is written)")
    source.add_argument("--nodelist", help="SLURM-style node list, e.g. 'node[01-04]'")
    parser.add_argument("--slots", type=int, help="ranks per node when writing a hostfile")
    parser.add_argument(
        "--write_hostfile", help="where to write the generated hostfile (default: a temp file)"
    )
    parser.add_argument("--no_ssh", action="store_true", help="one launcher per node (SLURM srun, K8s pods)")
    parser.add_argument("--node_rank", type=int, help=f"this node's index (default: from {NODE_RANK_ENV})")
    parser.add_argument("--master_addr", help="rendezvous host (default: $MASTER_ADDR, else the first host)")
    parser.add_argument(
        "--master_port", type=int, help=f"rendezvous port (default: $MASTER_PORT or {DEFAULT_MASTER_PORT})"
    )
    parser.add_argument(
        "--num_accelerators", type=int, help="ranks per node (overrides the hostfile's slots)"
    )
    parser.add_argument("--dry_run", action="store_true", help="print the command, do not run it")
    args = parser.parse_args(own)

    hostfile, hosts = _resolve_hostfile(args)
    node_rank = args.node_rank if args.node_rank is not None else node_rank_from_env(os.environ)
    port = args.master_port or int(os.environ.get("MASTER_PORT") or DEFAULT_MASTER_PORT)
    cmd = deepspeed_command(
        hostfile,
        len(hosts),
        program,
        master_addr=args.master_addr or os.environ.get("MASTER_ADDR") or hosts[0][0],
        master_port=port,
        no_ssh=args.no_ssh,
        node_rank=node_rank,
        num_accelerators=args.num_accelerators,
        deepspeed=_deepspeed_executable(),
    )
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
        # exec, so the scheduler's signals (srun cancel, pod termination) reach the launcher directly.
        # SIGUSR1 asks the ranks to checkpoint and exit (SLURM --signal reaches every process of the
        # step): ignored here, the ignore survives exec and the DeepSpeed launcher's children, whose
        # training ranks install their own handler (bertscale.runtime.faults).
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        os.execvp(cmd[0], cmd)


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
