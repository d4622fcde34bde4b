"""DeepSpeed hostfiles (``host slots=N`` lines) from a host list or a SLURM node list.

SLURM hands a job its nodes as a compressed list (``node[01-03,07],gpu7``); DeepSpeed wants one
``host slots=N`` line per node, in the order ranks are assigned. Node 0 of the hostfile is also
the rendezvous host (``--master_addr``).

    python -m bertscale.infra.hostfile --nodelist 'node[01-03],gpu7' --slots 8 -o hostfile
    python -m bertscale.infra.hostfile --slots 8 -o hostfile      # reads $SLURM_JOB_NODELIST
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bertscale.atomic import atomic_write_text
from bertscale.errors import ConfigError, run_cli

# A hostname label: letters, digits, '-', '_' and '.'; no shell or hostfile metacharacters.
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list: ``'node[01-03,07],gpu7'`` → ``node01 node02 node03 node07 gpu7``.

    Zero padding follows the lower bound (``[08-10]`` → 08 09 10). Nested brackets are not SLURM
    syntax and are rejected.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        hosts.extend(_expand_item(item, nodelist))
    if not hosts:
        raise ConfigError(f"node list {nodelist!r} is empty")
    _check_unique(hosts, f"node list {nodelist!r}")
    return hosts


def render_hostfile(hosts: Sequence[str], slots: int) -> str:
    """The hostfile text: one ``host slots=N`` line per host, in rank order."""
    if slots < 1:
        raise ConfigError(f"--slots must be >= 1 (accelerators per node), got {slots}")
    if not hosts:
        raise ConfigError("no hosts given (use --hosts, --nodelist or set SLURM_JOB_NODELIST)")
    for host in hosts:
        if not _HOST.match(host):
            raise ConfigError(f"invalid hostname {host!r}")
    _check_unique(hosts, "host list")
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """Parse and validate a hostfile into ``[(host, slots), ...]`` (comments and blanks skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: hostfile not found")
    entries: list[tuple[str, int]] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match or not _HOST.match(match.group(1)) or int(match.group(2)) < 1:
            raise ConfigError(f"{path}:{lineno}: expected 'HOST slots=N' with N >= 1, got {raw.strip()!r}")
        entries.append((match.group(1), int(match.group(2))))
    if not entries:
        raise ConfigError(f"{path}: hostfile has no hosts")
    _check_unique([host for host, _ in entries], str(path))
    return entries


def hosts_from_env(env: dict[str, str] | None = None) -> list[str]:
    """The job's nodes from SLURM (``SLURM_JOB_NODELIST``, older ``SLURM_NODELIST``)."""
    env = dict(os.environ) if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ConfigError("no hosts given: pass --hosts or --nodelist, or run inside a SLURM job")
    return expand_nodelist(nodelist)


# --- internals -------------------------------------------------------------------------------


def _split_top_level(nodelist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ConfigError(f"node list {nodelist!r}: nested '[' is not supported")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"node list {nodelist!r}: unmatched ']'")
        elif ch == "," and depth == 0:
            items.append(nodelist[start:i].strip())
            start = i + 1
    if depth != 0:
        raise ConfigError(f"node list {nodelist!r}: unmatched '['")
    items.append(nodelist[start:].strip())
    if any(not item for item in items):
        raise ConfigError(f"node list {nodelist!r}: empty entry")
    return items


def _expand_item(item: str, nodelist: str) -> list[str]:
    # An item holds at most one bracket group per run of digits, e.g. rack[1-2]-n[01-02].
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        if not _HOST.match(item):
            raise ConfigError(f"node list {nodelist!r}: invalid hostname {item!r}")
        return [item]
    prefix, suffix = item[: match.start()], item[match.end() :]
    expanded = []
    for part in match.group(1).split(","):
        rng = _RANGE.match(part.strip())
        if rng is None:
            raise ConfigError(f"node list {nodelist!r}: bad range {part!r} (expected N or N-M)")
        lo_text, hi_text = rng.group(1), rng.group(2) or rng.group(1)
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise ConfigError(f"node list {nodelist!r}: range {part!r} goes backwards")
        expanded += [f"{prefix}{n:0{len(lo_text)}d}{suffix}" for n in range(lo, hi + 1)]
    return [host for name in expanded for host in _expand_item(name, nodelist)]


def _check_unique(hosts: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for host in hosts:
        if host in seen:
            raise ConfigError(f"{where}: host {host!r} listed twice")
        seen.add(host)


def select_hosts(hosts: Sequence[str] | None, nodelist: str | None) -> list[str]:
    """The node list from explicit hosts, else a SLURM-style list, else the scheduler's environment."""
    if hosts:
        return list(hosts)
    if nodelist:
        return expand_nodelist(nodelist)
    return hosts_from_env()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bertscale.infra.hostfile", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hosts", nargs="+", help="hostnames, node 0 first")
    source.add_argument("--nodelist", help="SLURM-style node list, e.g. 'node[01-03],gpu7'")
    parser.add_argument("--slots", type=int, required=True, help="accelerators (ranks) per node")
    parser.add_argument("-o", "--output", help="write here (atomically) instead of stdout")
    args = parser.parse_args(argv)
    hosts = select_hosts(args.hosts, args.nodelist)
    text = render_hostfile(hosts, args.slots)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {args.output}: {len(hosts)} nodes x {args.slots} slots")
    else:
        print(text, end="")


def cli() -> None:
    raise SystemExit(run_cli(main))


if __name__ == "__main__":
    cli()
