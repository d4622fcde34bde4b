"""Raw inputs → documents: Wikipedia pages-articles dumps (.xml/.xml.bz2), book .txt files and
text files with one document per line (books packaged as R data: r_datasets.py).

Dumps are streamed page by page with mwxml, so a dump is never whole in memory. Wikitext is
reduced to body prose with mwparserfromhell: templates, references, tables, lists, headings,
galleries and file/category links are dropped; link text and inline formatting are kept.
Books must be UTF-8; a book that is not is skipped and recorded (not decoded lossily), so no
mojibake enters the corpus.
"""

from __future__ import annotations

import bz2
import glob
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import mwparserfromhell
import mwxml
from mwparserfromhell.nodes import (
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from bertscale.errors import DataError


@dataclass
class RawDocument:
    """One article or book before cleaning; ``kind`` picks the cleaner."""

    source: str
    title: str
    text: str
    kind: str  # "wiki" | "book"


@dataclass
class Document:
    source: str
    title: str
    sentences: list[str]


# --- locating inputs ---------------------------------------------------------------------------


def resolve_path(spec: str) -> str:
    """``pkg://PACKAGE/rel/path`` → the file inside the installed package; anything else unchanged."""
    if not spec.startswith("pkg://"):
        return spec
    package, _, rel = spec[len("pkg://") :].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"{spec}: package '{package}' is not installed (pip install 'bertscale[corpora]')")
    return str(Path(next(iter(found.submodule_search_locations))) / rel)


def expand_inputs(specs: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Paths/globs → sorted existing files, plus ``{"path", "reason"}`` for specs that match nothing."""
    files: list[str] = []
    missing: list[dict[str, str]] = []
    for spec in specs:
        try:
            path = resolve_path(spec)
        except DataError as err:
            missing.append({"path": spec, "reason": str(err).split(": ", 1)[-1]})
            continue
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            missing.append({"path": spec, "reason": "not found"})
        files.extend(m for m in matches if m not in files)
    return files, missing


# --- reading -----------------------------------------------------------------------------------


def iter_wiki_pages(path: str) -> Iterator[RawDocument]:
    """Stream main-namespace, non-redirect pages; a malformed dump raises DataError after the good pages."""
    if Path(path).stat().st_size == 0:
        raise DataError("empty file")
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rb") as f:
        yield from parse_wiki_pages(f, path)


def parse_wiki_pages(f: BinaryIO, source: str) -> Iterator[RawDocument]:
    """:func:`iter_wiki_pages` of an open XML stream (e.g. a decompressed range of a multistream
    dump with the dump's header put in front); ``source`` names the documents."""
    count = 0
    try:
        dump = mwxml.Dump.from_file(f)
        for page in dump:
            text = None
            for revision in page:  # pages-articles holds the latest revision only; keep the last
                text = revision.text
            count += 1
            if page.namespace != 0 or page.redirect is not None or not text:
                continue
            if text.lstrip()[:9].upper() == "#REDIRECT":
                continue
            yield RawDocument(source, page.title or "", text, "wiki")
    except Exception as err:  # mwxml/expat fail in many ways on bad input; any of them ends this file only
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = f"after {count} pages" if count else "at the start"
        raise DataError(f"malformed dump {where} ({type(err).__name__}: {detail})") from None
    if count == 0:
        raise DataError("dump holds no pages")


def _read_text(path: str) -> str:
    return decode_text(Path(path).read_bytes())


def decode_text(raw: bytes) -> str:
    """A text file's bytes as text; binary, non-UTF-8 or empty content is a DataError."""
    nul = raw.find(b"\x00")
    if nul >= 0:  # UTF-8 text never holds NUL: an image, an archive, a zero-filled file
        raise DataError(f"binary content, not text (NUL byte at offset {nul})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise DataError("empty file")
    return text


def read_book(path: str) -> RawDocument:
    return RawDocument(path, Path(path).stem, _read_text(path), "book")


def read_line_documents(path: str) -> list[RawDocument]:
    """One document per non-empty line (e.g. gensim's lee_background.cor: one news story a line)."""
    lines = _read_text(path).splitlines()
    return [
        RawDocument(path, f"{Path(path).name}:{i + 1}", line, "book")
        for i, line in enumerate(lines)
        if line.strip()
    ]


# --- cleaning ----------------------------------------------------------------------------------

_LIST_MARK = "\x00"  # stands in for a list bullet; lines holding it are dropped
_INLINE_TAGS = {"b", "i", "u", "s", "em", "strong", "small", "big", "sub", "sup", "span", "abbr", "nowiki"}
_DROP_LINK_PREFIXES = {"file", "image", "media", "category"}
_LANG_PREFIX = re.compile(r"^[a-z]{2,3}(-[a-z]+)*$")


def _plain(code: Wikicode) -> str:
    parts: list[str] = []
    for node in code.nodes:
        if isinstance(node, Text):
            parts.append(node.value)
        elif isinstance(node, HTMLEntity):
            parts.append(node.normalize())
        elif isinstance(node, Wikilink):
            title = str(node.title).strip()
            prefix = title.split(":", 1)[0].strip().lower() if ":" in title else ""
            if prefix in _DROP_LINK_PREFIXES or (prefix and _LANG_PREFIX.match(prefix)):
                continue
            parts.append(_plain(node.text) if node.text is not None else _plain(node.title))
        elif isinstance(node, ExternalLink):
            parts.append(_plain(node.title) if node.title is not None else "")
        elif isinstance(node, Tag):
            if node.wiki_markup in ("*", "#", ":", ";"):
                parts.append(_LIST_MARK)
            elif str(node.tag).lower() in _INLINE_TAGS and node.contents is not None:
                parts.append(_plain(node.contents))
            # everything else (ref, table, gallery, math, references, ...) is not body prose
        elif isinstance(node, Template | Comment | Heading):
            continue
    return "".join(parts)


def wikitext_paragraphs(text: str) -> list[str]:
    """Body prose of one article, one string per paragraph."""
    plain = _plain(mwparserfromhell.parse(text))
    paragraphs = []
    for line in plain.split("\n"):
        if _LIST_MARK in line:
            continue
        line = " ".join(line.split())
        if line:
            paragraphs.append(line)
    return paragraphs


def book_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each joined into one line."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [" ".join(b.split()) for b in blocks if b.strip()]


# Sentence boundary: terminal punctuation (+ closing quotes/brackets), whitespace, then what can
# start a sentence. Abbreviations and initials before the dot veto the split.
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "vol",
    "fig", "approx", "ca", "c", "gen", "col", "lt", "sgt", "mt", "ft", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "inc", "ltd", "co",
}  # fmt: skip


def split_sentences(paragraph: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        words = paragraph[start : match.start()].split()
        last = words[-1].lower().rstrip(".") if words else ""
        if match.group().startswith(".") and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        sentences.append(paragraph[start : match.end()].strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def clean_document(raw: RawDocument, min_sentence_chars: int) -> Document:
    paragraphs = wikitext_paragraphs(raw.text) if raw.kind == "wiki" else book_paragraphs(raw.text)
    sentences = [s for p in paragraphs for s in split_sentences(p) if len(s) >= min_sentence_chars]
    return Document(raw.source, raw.title, sentences)
