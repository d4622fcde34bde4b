"""Users' own corpora → raw documents: JSONL (a text field), Parquet (a text column), plain-text files.

Each may be compressed (``.gz``, ``.bz2``, ``.zst``; Parquet compresses inside the file). One JSONL
line or Parquet row is one document, one plain-text file is one document (blank lines separate
paragraphs, as for books). Bad records (a line that is not JSON, lacks the field or holds no
string there; a null cell) are skipped: the good ones are yielded and, at the end of the file, a
DataError says how many were skipped and why, so the pipeline records the file in ``skipped`` with
that reason (or stops under ``on_bad_input=fail``) after keeping and counting its good documents.

Pure functions, no Ray: the pipeline's read tasks call them (bertscale.data_pipeline.stages).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bertscale.data_pipeline.sources import RawDocument, decode_text, expand_inputs, resolve_path
from bertscale.errors import DataError

COMPRESSED = (".gz", ".bz2", ".zst")
MAX_REASONS = 3  # bad records quoted in the skip reason; the count covers them all


def open_binary(path: str) -> IO[bytes]:
    """The file's bytes, decompressed by its suffix (``.gz``, ``.bz2``, ``.zst``)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


class _BadRecords:
    """Counts skipped records; ``check`` raises the one-line summary once the good ones are out."""

    def __init__(self, unit: str) -> None:
        self.unit, self.count, self.total, self.reasons = unit, 0, 0, []

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{where}: {reason}")

    def check(self) -> None:
        if self.count:
            more = "; ..." if self.count > len(self.reasons) else ""
            raise DataError(
                f"{self.count} of {self.total} {self.unit}s skipped ({'; '.join(self.reasons)}{more})"
            )


def iter_jsonl(path: str, field: str) -> Iterator[RawDocument]:
    """One document per line, its text at ``field``; empty lines are not records."""
    bad = _BadRecords("line")
    title = Path(path).name
    try:
        with open_binary(path) as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                bad.total += 1
                try:
                    record = json.loads(line)
                except ValueError:
                    bad.add(f"line {number}", "not JSON")
                    continue
                text = record.get(field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    bad.add(f"line {number}", f"no string field '{field}'")
                    continue
                if text.strip():
                    yield RawDocument(path, f"{title}:{number}", text, "book")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 after {bad.total} lines (invalid byte at offset {err.start})") from None
    except (OSError, EOFError, ValueError) as err:  # truncated/corrupt compressed stream
        raise DataError(f"unreadable after {bad.total} lines ({type(err).__name__}: {err})") from None
    if bad.total == 0:
        raise DataError("holds no records")
    bad.check()


def iter_parquet(path: str, column: str) -> Iterator[RawDocument]:
    """One document per row, its text in ``column`` (read in record batches: bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = _BadRecords("row")
    title = Path(path).name
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})") from None
    if column not in parquet.schema_arrow.names:
        raise DataError(f"has no column '{column}' (columns: {', '.join(parquet.schema_arrow.names)})")
    try:
        for batch in parquet.iter_batches(columns=[column], batch_size=4096):
            for value in batch.column(0).to_pylist():
                bad.total += 1
                if not isinstance(value, str):
                    bad.add(f"row {bad.total}", "null" if value is None else f"not a string ({type(value).__name__})")
                elif value.strip():
                    yield RawDocument(path, f"{title}:{bad.total}", value, "book")
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"unreadable after {bad.total} rows ({err})") from None
    bad.check()


def read_text_file(path: str) -> RawDocument:
    """A whole UTF-8 text file (compressed or not) as one document."""
    try:
        with open_binary(path) as f:
            raw = f.read()
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"unreadable ({type(err).__name__}: {err})") from None
    text = decode_text(raw)
    name = Path(path).name
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return RawDocument(path, Path(name).stem, text, "book")


def expand_text_inputs(specs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Plain-text inputs → files: directories walked (sorted, hidden entries skipped), files and
    globs as :func:`~bertscale.data_pipeline.sources.expand_inputs` has them; plus what matched nothing."""
    files, missing = [], []
    for spec in specs:
        path = resolve_path(spec) if spec.startswith("pkg://") else spec
        if not os.path.isdir(path):
            found, lost = expand_inputs([spec])
            files.extend(found)
            missing.extend(lost)
            continue
        walked = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            walked.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        if not walked:
            missing.append({"path": spec, "reason": "empty directory"})
        files.extend(walked)
    return files, missing
