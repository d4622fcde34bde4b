"""Books that ship as R data packages (Debian's r-cran-janeaustenr, r-cran-tokenizers) → documents.

An input ``PACKAGE`` or ``PACKAGE/NAME`` names the character-vector datasets of an installed R
package (R itself is not needed): ``janeaustenr`` is the six Jane Austen novels, ``tokenizers/mobydick``
is Moby Dick; each chapter is a document. R keeps a package's datasets in a lazy-load database,
``data/Rdata.rdx`` (gzip, the index: name -> offset, length) + ``data/Rdata.rdb`` (per dataset a
4-byte length and a zlib stream of the serialised object); the PyPI package ``rdata`` parses the
serialisation. Packages are looked for in ``{sys.prefix}/share/bertscale/R/site-library`` (where
scripts/install.sh unpacks the Debian packages) and R's usual site libraries.
"""

from __future__ import annotations

import gzip
import re
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from bertscale.data_pipeline.sources import RawDocument
from bertscale.errors import DataError

SITE_LIBRARIES = (
    Path(sys.prefix) / "share" / "bertscale" / "R" / "site-library",
    Path("/usr/lib/R/site-library"),
    Path("/usr/local/lib/R/site-library"),
    Path("/usr/lib/R/library"),
)
_GUTENBERG = re.compile(r"\*\*\* ?START OF.*?\*\*\*(.*?)\*\*\* ?END OF", re.S)
_GUTENBERG_END = re.compile(r"\n\s*End of (the )?Project Gutenberg", re.I)
_CHAPTER = re.compile(r"^[ \t]*(?:CHAPTER|Chapter)[ \t]+(?:[IVXLC]+|\d+)\b.*$", re.M)


def find_package(package: str) -> Path:
    for library in SITE_LIBRARIES:
        data = library / package / "data"
        if (data / "Rdata.rdx").is_file() and (data / "Rdata.rdb").is_file():
            return data
    raise DataError(f"R data package '{package}' not found (scripts/install.sh unpacks it from Debian)")


def _parse(raw: bytes):
    import rdata  # optional: only R-packaged corpora need it

    with warnings.catch_warnings():  # "Unknown file type: assumed RDS": a bare serialisation is one
        warnings.simplefilter("ignore", UserWarning)
        return rdata.conversion.convert(rdata.parser.parse_data(raw))


def split_chapters(text: str) -> list[tuple[str, str]]:
    """(heading, body) per chapter; the front matter before the first heading is dropped. A text
    without chapter headings is one part. Chapters as documents give the document-level
    validation split and NSP's random-next sampling units finer than whole novels."""
    heads = list(_CHAPTER.finditer(text))
    if not heads:
        return [("", text)]
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return [(h.group().strip(), text[h.end() : end]) for h, end in zip(heads, ends, strict=True)]


def strip_gutenberg(text: str) -> str:
    """The book without Project Gutenberg's header, "End of ..." line and licence, where it has them."""
    body = _GUTENBERG.search(text)
    text = body.group(1) if body else text
    end = _GUTENBERG_END.search(text)
    return text[: end.start()] if end else text


def iter_r_texts(spec: str) -> Iterator[RawDocument]:
    """``PACKAGE[/NAME]``: per character-vector dataset (a book: lines joined by newlines), one
    document per chapter."""
    package, _, name = spec.partition("/")
    data = find_package(package)
    try:
        index = _parse(gzip.decompress((data / "Rdata.rdx").read_bytes()))["variables"]
        names = [str(n) for n in index]
        if name and name not in names:
            raise DataError(f"R package '{package}' has no dataset '{name}' (it has {', '.join(names)})")
        with (data / "Rdata.rdb").open("rb") as db:
            for dataset in [name] if name else names:
                offset, length = (int(v) for v in index[dataset])
                db.seek(offset)
                value = _parse(zlib.decompress(db.read(length)[4:]))
                if getattr(value, "dtype", None) is None or value.dtype.kind not in "US":
                    continue  # not a text dataset
                text = "\n".join(str(line) for line in value)
                for heading, body in split_chapters(strip_gutenberg(text)):
                    title = f"{dataset} {heading}".strip()
                    yield RawDocument(f"r://{package}/{dataset}", title, body, "book")
    except DataError:
        raise
    except Exception as err:  # a damaged database fails in many ways; any of them ends this input
        raise DataError(f"unreadable R data in {data} ({type(err).__name__}: {err})") from None
