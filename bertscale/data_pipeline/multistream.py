"""Wikimedia multistream dumps: byte ranges that tasks decompress and parse independently.

``…-pages-articles-multistream.xml.bz2`` is a concatenation of bz2 streams: the first holds the
XML header (``<mediawiki>`` + ``<siteinfo>``), then each holds 100 ``<page>`` elements, and the
last closes ``</mediawiki>``. ``…-multistream-index.txt.bz2`` lists ``offset:page_id:title`` per
page, the offset being where that page's stream starts. A range of whole streams, put behind the
dump's header and closed with ``</mediawiki>``, is an XML document of its own, which
:func:`bertscale.data_pipeline.sources.parse_wiki_pages` reads like a whole dump.
"""

from __future__ import annotations

import bz2
import html
import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bertscale.atomic import atomic_write
from bertscale.data_pipeline.sources import RawDocument, parse_wiki_pages
from bertscale.errors import DataError

DUMP_SUFFIX = "-multistream.xml.bz2"
INDEX_SUFFIX = "-multistream-index.txt.bz2"
READ_CHUNK = 1 << 20  # compressed bytes per read
FOOTER = b"</mediawiki>"
# every bz2 stream starts "BZh" + block size digit, then a block (pi) or end-of-stream (sqrt pi) magic
_STREAM_START = re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)")


def index_path(dump: str) -> Path | None:
    """The index next to a ``…-multistream.xml.bz2`` dump (Wikimedia's naming), or None."""
    if not dump.endswith(DUMP_SUFFIX):
        return None
    index = Path(dump[: -len(DUMP_SUFFIX)] + INDEX_SUFFIX)
    return index if index.is_file() else None


def stream_offsets(dump: str, index: str | Path) -> np.ndarray:
    """Sorted start offsets of the page streams the index lists, each checked against the dump.

    An index that does not match its dump (an offset past its end or not at a bz2 stream start,
    an unreadable index) raises DataError naming the index.
    """
    size = Path(dump).stat().st_size
    try:
        with bz2.open(index, "rt", encoding="utf-8") as f:
            offsets = np.unique(
                np.fromiter((int(line.split(":", 1)[0]) for line in f if line.strip()), np.int64)
            )
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{index}: unreadable multistream index ({type(err).__name__}: {err})") from None
    if len(offsets) == 0:
        raise DataError(f"{index}: multistream index lists no pages")
    with open(dump, "rb") as f:
        for offset in offsets.tolist():
            f.seek(offset)
            if offset >= size or not _STREAM_START.match(f.read(10)):
                raise DataError(
                    f"{index}: does not match {Path(dump).name} (offset {offset} is not the start of a"
                    f" bz2 stream in a {size}-byte dump)"
                )
    return offsets


def dump_header(dump: str) -> bytes:
    """The XML before the first ``<page>``: decompressed from the dump's first stream."""
    decompressor, out = bz2.BZ2Decompressor(), []
    with open(dump, "rb") as f:
        while not decompressor.eof and (chunk := f.read(READ_CHUNK)):
            out.append(decompressor.decompress(chunk))
    head = b"".join(out)
    return head[: head.index(b"<page>")] if b"<page>" in head else head


def plan_ranges(offsets: np.ndarray, size: int, parts: int) -> list[tuple[int, int]]:
    """Whole streams from the first page stream to the end of the dump → about ``parts`` byte ranges of
    similar compressed size (the last runs to the end, so it holds the closing stream)."""
    bounds = np.append(offsets, size)
    targets = bounds[0] + (size - bounds[0]) * np.arange(1, parts) / parts
    cuts = bounds[np.searchsorted(bounds, targets)]
    edges = np.unique(np.concatenate([[bounds[0]], cuts, [size]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges.tolist())]


class _RangeReader(io.RawIOBase):
    """header + the decompressed streams in ``[start, end)`` + ``</mediawiki>`` unless they hold it."""

    def __init__(self, dump: str, start: int, end: int, header: bytes) -> None:
        self._parts = self._generate(dump, start, end, header)
        self._buffer = b""

    @staticmethod
    def _generate(dump: str, start: int, end: int, header: bytes) -> Iterator[bytes]:
        if start > 0:
            yield header
        tail, decompressor = b"", bz2.BZ2Decompressor()
        with open(dump, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0 and (chunk := f.read(min(READ_CHUNK, left))):
                left -= len(chunk)
                while chunk:
                    if decompressor.eof:  # concatenated streams: a fresh decompressor for each
                        decompressor = bz2.BZ2Decompressor()
                    data = decompressor.decompress(chunk)
                    chunk = decompressor.unused_data if decompressor.eof else b""
                    if data:
                        tail = (tail + data)[-len(FOOTER) - 64 :]
                        yield data
        if not decompressor.eof:
            raise EOFError(f"bz2 stream cut at byte {end}")
        if FOOTER not in tail:
            yield FOOTER

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._buffer:
            self._buffer = next(self._parts, None)  # type: ignore[assignment]
            if self._buffer is None:
                self._buffer = b""
                return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def range_pages(dump: str, start: int, end: int, header: bytes) -> Iterator[RawDocument]:
    """The pages of the streams in ``[start, end)``, as :func:`sources.iter_wiki_pages` gives them."""
    with io.BufferedReader(_RangeReader(dump, start, end, header), READ_CHUNK) as f:
        yield from parse_wiki_pages(f, dump)


def write_multistream(xml: bytes, root: Path, pages_per_stream: int = 100, name: str = "enwiki") -> Path:
    """Wikimedia's multistream layout from a plain dump's XML (in memory: for tests, benchmarks and
    small dumps): a header stream, streams of ``pages_per_stream`` pages, a closing stream, and the
    ``offset:page_id:title`` index, as ``root/{name}-pages-articles-multistream.xml.bz2`` and its
    index. → the dump's path."""
    first, last = xml.index(b"<page>"), xml.rindex(b"</page>") + len(b"</page>")
    pages = re.findall(rb"<page>.*?</page>", xml[first:last], flags=re.S)
    dump = root / f"{name}-pages-articles{DUMP_SUFFIX}"
    streams = [xml[:first]] + [
        b"\n  ".join(pages[i : i + pages_per_stream]) + b"\n  " for i in range(0, len(pages), pages_per_stream)
    ] + [xml[last:]]  # fmt: skip
    index_lines, offset = [], 0
    with atomic_write(dump, "wb") as f:
        for number, stream in enumerate(streams):
            if 0 < number < len(streams) - 1:
                for page in re.findall(rb"<page>.*?</page>", stream, flags=re.S):
                    page_id = re.search(rb"<id>(\d+)</id>", page).group(1).decode()  # type: ignore[union-attr]
                    title = re.search(rb"<title>(.*?)</title>", page, flags=re.S).group(1)  # type: ignore[union-attr]
                    index_lines.append(f"{offset}:{page_id}:{html.unescape(title.decode())}\n")
            packed = bz2.compress(stream)
            f.write(packed)
            offset += len(packed)
    with atomic_write(root / f"{name}-pages-articles{INDEX_SUFFIX}", "wb") as f:
        f.write(bz2.compress("".join(index_lines).encode("utf-8")))
    return dump
