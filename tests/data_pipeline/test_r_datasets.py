"""Books in R data packages (lazy-load databases) and one-document-per-line files."""

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest

from bertscale.data_pipeline import r_datasets
from bertscale.data_pipeline.sources import clean_document, read_line_documents
from bertscale.errors import DataError

rdata = pytest.importorskip("rdata")

BOOK = (
    "The Project Gutenberg EBook of Emma\n\n*** START OF THIS PROJECT GUTENBERG EBOOK EMMA ***\n\n"
    "EMMA\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich, had lived nearly twenty-one years.\n"
    "She was the youngest of the two daughters.\n\nCHAPTER II\n\nMr. Weston was a native of Highbury.\n\n"
    "*** END OF THIS PROJECT GUTENBERG EBOOK EMMA ***\nlicence"
)


def _serialise(value) -> bytes:
    from rdata.conversion import convert_python_to_r_data
    from rdata.unparser import unparse_data

    return unparse_data(convert_python_to_r_data(value), file_format="xdr", file_type="rds")


def write_r_package(library: Path, package: str, datasets: dict) -> Path:
    """An R package's data/Rdata.rdx + Rdata.rdb as R's lazy-load database lays them out."""
    data = library / package / "data"
    data.mkdir(parents=True)
    blobs, index, offset = [], {}, 0
    for name, value in datasets.items():
        raw = _serialise(value)
        blob = len(raw).to_bytes(4, "big") + zlib.compress(raw)
        index[name] = np.array([offset, len(blob)], dtype=np.int32)
        blobs.append(blob)
        offset += len(blob)
    (data / "Rdata.rdb").write_bytes(b"".join(blobs))
    rdx = {"variables": index, "references": {}, "compressed": np.array([True])}
    (data / "Rdata.rdx").write_bytes(gzip.compress(_serialise(rdx)))
    return data


@pytest.fixture
def library(tmp_path, monkeypatch) -> Path:
    lib = tmp_path / "site-library"
    write_r_package(
        lib,
        "austen",
        {
            "emma": np.array(BOOK.split("\n")),
            "counts": np.array([1.0, 2.0]),  # not text: ignored
            "persuasion": np.array(["PERSUASION", "", "Sir Walter Elliot never took up any book."]),
        },
    )
    monkeypatch.setattr(r_datasets, "SITE_LIBRARIES", (tmp_path / "absent", lib))
    return lib


def test_every_text_dataset_of_a_package_is_one_book_without_the_gutenberg_wrapper(library):
    docs = list(r_datasets.iter_r_texts("austen"))
    assert [(d.source, d.title, d.kind) for d in docs] == [
        ("r://austen/emma", "emma CHAPTER I", "book"),  # one document per chapter, front matter dropped
        ("r://austen/emma", "emma CHAPTER II", "book"),
        ("r://austen/persuasion", "persuasion", "book"),  # no chapter headings: the whole book
    ]
    assert all("Gutenberg" not in d.text and "licence" not in d.text for d in docs)
    assert clean_document(docs[0], 8).sentences == [
        "Emma Woodhouse, handsome, clever, and rich, had lived nearly twenty-one years.",
        "She was the youngest of the two daughters.",
    ]
    assert clean_document(docs[1], 8).sentences == ["Mr. Weston was a native of Highbury."]
    (one,) = r_datasets.iter_r_texts("austen/persuasion")
    assert one.text.endswith("never took up any book.")


def test_old_gutenberg_footer_is_cut():
    text = "Call me Ishmael.\n\nEnd of Project Gutenberg's Moby Dick"
    assert r_datasets.strip_gutenberg(text) == "Call me Ishmael."


def test_missing_package_dataset_and_damaged_database_are_one_clear_error(library):
    with pytest.raises(DataError, match="R data package 'nope' not found"):
        list(r_datasets.iter_r_texts("nope"))
    with pytest.raises(DataError, match=r"no dataset 'sanditon' \(it has emma, counts, persuasion\)"):
        list(r_datasets.iter_r_texts("austen/sanditon"))
    rdb = library / "austen" / "data" / "Rdata.rdb"
    rdb.write_bytes(rdb.read_bytes()[:-40])  # truncated: the last dataset is damaged
    docs = []
    with pytest.raises(DataError, match=r"unreadable R data in .*austen/data"):
        for doc in r_datasets.iter_r_texts("austen"):
            docs.append(doc.title)
    assert docs == ["emma CHAPTER I", "emma CHAPTER II"]  # what came before the damage was delivered


def test_line_documents_one_per_non_empty_line(tmp_path):
    path = tmp_path / "news.cor"
    path.write_text("First story. It has two sentences.\n\nSecond story here.\n", encoding="utf-8")
    docs = read_line_documents(str(path))
    assert [(d.title, d.text) for d in docs] == [
        ("news.cor:1", "First story. It has two sentences."),
        ("news.cor:3", "Second story here."),
    ]
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_line_documents(str(path))


def test_the_installed_demo_books_when_present():
    """The real Debian packages, as scripts/install.sh unpacks them (skipped where they are absent)."""
    try:
        r_datasets.find_package("janeaustenr")
    except DataError:
        pytest.skip("r-cran-janeaustenr not unpacked here")
    chapters: dict[str, int] = {}
    for doc in r_datasets.iter_r_texts("janeaustenr"):
        book = doc.source.rsplit("/", 1)[-1]
        chapters[book] = chapters.get(book, 0) + 1
    assert chapters == {  # Emma's three volumes number their chapters anew (55 headings in all)
        "emma": 55,
        "mansfieldpark": 48,
        "northangerabbey": 31,
        "persuasion": 24,
        "prideprejudice": 61,
        "sensesensibility": 50,
    }
    (last,) = [d for d in r_datasets.iter_r_texts("tokenizers/mobydick")][-1:]
    assert last.title == "mobydick CHAPTER 135. The Chase.--Third Day." or last.title.startswith(
        "mobydick CHAPTER 135"
    )
    assert "Project Gutenberg" not in last.text and " ".join(last.text.split()).endswith("another orphan.")
