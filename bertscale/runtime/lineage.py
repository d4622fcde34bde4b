"""What a tracked run records about where it came from: code, command, versions, hosts, data.

Public API:
    run_tags(description, *, world_size=1, hosts=()) -> dict[str, str]   tags of a new MLflow run
    manifest_dataset(shards_dir) -> ProfiledDataset     the pipeline's output as an mlflow.data dataset
    file_dataset(name, paths, profile) -> ProfiledDataset   any input files as one
    sha256_file(path) -> str

Code lineage uses MLflow's own run-context tags (``mlflow.source.name/type``,
``mlflow.source.git.commit/branch``, ``mlflow.user``) and adds what MLflow lacks: whether the work
tree was dirty, the command line, the library versions, world size and hosts, and the run's
description (``mlflow.note.content``, shown on the run page). Nothing secret: a URI's password in the
command line and a git remote's credentials are redacted (bertscale.secrets).
"""

from __future__ import annotations

# Imported only where tracking is on (mlflow takes seconds to import).
import hashlib
import importlib.metadata
import json
import shlex
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME

from bertscale.data_pipeline.schema import MANIFEST_NAME, load_manifest
from bertscale.runtime.tracking import RUN_NOTE
from bertscale.secrets import redact

PACKAGES = ("bertscale", "torch", "deepspeed", "ray", "mlflow")
DIGEST_CHARS = 32  # MLflow caps a dataset digest at 36 characters; the full hash is in the profile


def run_tags(description: str, *, world_size: int = 1, hosts: Iterable[str] = ()) -> dict[str, str]:
    tags = _mlflow_context_tags()
    tags |= {f"bertscale.version.{name}": version for name, version in _versions().items()}
    commit = _git("rev-parse", "HEAD")
    if commit:  # MLflow's context caches the first run's entry point per process; ours names bertscale's code
        tags[MLFLOW_GIT_COMMIT] = commit
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    if dirty is not None:
        tags["bertscale.git.dirty"] = str(bool(dirty)).lower()
    tags |= {
        "bertscale.command": _command_line(sys.argv),
        "bertscale.world_size": str(world_size),
        "bertscale.hosts": ",".join(sorted(set(hosts))) or socket.gethostname(),
        RUN_NOTE: description,
    }
    return tags


def _mlflow_context_tags() -> dict[str, str]:
    tags = {k: str(v) for k, v in resolve_tags().items()}
    if MLFLOW_GIT_REPO_URL in tags:  # a remote may carry a token
        tags[MLFLOW_GIT_REPO_URL] = redact(tags[MLFLOW_GIT_REPO_URL])
    if MLFLOW_SOURCE_NAME in tags and sys.argv and sys.argv[0] in ("-m", "-c"):
        tags[MLFLOW_SOURCE_NAME] = _command_line(sys.argv)[:500]
    return tags


def _versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _git(*args: str) -> str | None:
    """A git command's output in the repository bertscale is imported from (None: not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _command_line(argv: list[str]) -> str:
    """``sys.argv`` as a shell line, the module named (``python -m x``), URI credentials redacted."""
    argv = list(argv)
    module = argv and argv[0].endswith("__main__.py")  # python -m pkg: argv[0] is pkg/__main__.py
    words = [redact(word) for word in (argv[1:] if module else argv)]
    line = " ".join(shlex.quote(w) for w in words)
    return f"-m {_module_name(Path(argv[0]).parent)} {line}" if module else line


def _module_name(package: Path) -> str:
    """``.../bertscale/pretrain`` → ``bertscale.pretrain`` (up through the dirs holding ``__init__.py``)."""
    parts = [package.name]
    while (package.parent / "__init__.py").is_file():
        package = package.parent
        parts.insert(0, package.name)
    return ".".join(parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_dataset(shards_dir: Path) -> ProfiledDataset:
    """The pipeline output as an MLflow dataset: digest = hash of manifest.json, source = the shards."""
    manifest = load_manifest(shards_dir)
    profile: dict[str, Any] = {
        "manifest_sha256": sha256_file(Path(shards_dir) / MANIFEST_NAME),
        "tokenizer_sha256": manifest.tokenizer_sha256,
        "vocab_size": manifest.vocab_size,
        "max_seq_length": manifest.max_seq_length,
        "dupe_factor": manifest.dupe_factor,
        "skipped_inputs": len(manifest.skipped),
    }
    for name, split in manifest.splits.items():
        profile[f"{name}_shards"] = len(split.shards)
        profile[f"{name}_samples"] = split.samples
        profile[f"{name}_tokens"] = split.tokens
    name = f"{Path(shards_dir).resolve().name}-{profile['manifest_sha256'][:8]}"
    return ProfiledDataset(Path(shards_dir), name, profile["manifest_sha256"], profile)


def file_dataset(name: str, paths: list[Path], profile: Mapping[str, Any]) -> ProfiledDataset:
    """Input files as an MLflow dataset: digest = hash of their bytes, source = the first file."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode())
    return ProfiledDataset(paths[0], name, digest.hexdigest(), {"files": len(paths), **profile})


class ProfiledDataset(MetaDataset):
    """MLflow's metadata-only dataset plus a profile (the counts shown in the run's Datasets pane)."""

    def __init__(self, path: Path, name: str, digest: str, profile: Mapping[str, Any]):
        self._profile = dict(profile)
        with warnings.catch_warnings():  # MLflow registers the local source twice and says so
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(path.resolve()))
        super().__init__(source, name=name, digest=digest[:DIGEST_CHARS])

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}
