"""Crash-safe writes: write to a temporary sibling, fsync, then rename over the target.

A reader (or a resumed job) therefore sees either the old complete file/directory or the new
complete one, never a half-written shard or checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from bertscale.errors import ConfigError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], owned: Callable[[str], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``path`` only once the block completes.

    ``owned`` is None: ``path`` is wholly ours and an existing one is replaced (moved aside first,
    then deleted), so a crash at any point leaves either the previous complete directory or the
    new one. ``owned`` given (a user-chosen output directory): only entries the new directory
    writes or that ``owned(name)`` claims are replaced; every other file in ``path`` is kept.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _fsync_dir(tmp)
        new = {p.name for p in tmp.iterdir()}
        foreign = (
            [p for p in target.iterdir() if p.name not in new and not owned(p.name)]
            if owned is not None and target.is_dir()
            else []
        )
        if foreign:
            _merge_into(tmp, target, owned or (lambda name: False))
        else:
            _swap(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _merge_into(tmp: Path, target: Path, owned: Callable[[str], bool]) -> None:
    """Replace our entries of ``target`` by those of ``tmp`` one rename at a time; keep the rest."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    new = {p.name for p in tmp.iterdir()}
    for entry in list(target.iterdir()):
        if entry.name in new or owned(entry.name):
            os.replace(entry, old / entry.name)
    for entry in tmp.iterdir():
        os.replace(entry, target / entry.name)
    _fsync_dir(target)
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)


def prepare_output_dir(
    path: str | os.PathLike[str],
    *,
    key: str,
    overwrite: bool,
    overwrite_hint: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    reusable: Callable[[Path], bool] | None = None,
) -> Path:
    """Check a user-chosen output directory before any work starts; a problem is a ConfigError.

    Refused: a path that is a file or cannot be created; one that is, contains or lies inside
    one of ``inputs`` (an export onto its own source would replace it); a non-empty directory,
    unless ``overwrite`` (then the writer replaces only its own files) or ``reusable(path)``
    (e.g. a pretraining run dir that resumes). Nothing is created here.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}: {out} is a file, not a directory")
    resolved = out.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if resolved == source or resolved.is_relative_to(source) or source.is_relative_to(resolved):
            relation = (
                "is" if resolved == source else "is inside" if resolved.is_relative_to(source) else "contains"
            )
            raise ConfigError(
                f"{key}: {out} {relation} the input {given}; choose a separate output directory"
            )
    if not out.exists():
        parent = next(p for p in resolved.parents if p.exists())
        if not parent.is_dir():
            raise ConfigError(f"{key}: cannot create {out}: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: cannot create {out}: {parent} is not writable")
        return out
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {out} is not writable")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not overwrite and not (reusable is not None and reusable(out)):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"{key}: {out} is not empty ({shown}); choose an empty or new directory, or pass "
            f"{overwrite_hint} to replace bertscale's files in it (other files are kept)"
        )
    return out
