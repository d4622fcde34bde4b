"""Reading and cleaning inputs: wiki dumps (streamed), books, sentence splitting, bad files."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from bertscale.data_pipeline.sources import (
    book_paragraphs,
    clean_document,
    expand_inputs,
    iter_wiki_pages,
    read_book,
    resolve_path,
    split_sentences,
    wikitext_paragraphs,
)
from bertscale.errors import DataError

ASSETS = Path(__file__).parents[1] / "assets"
WIKI = ASSETS / "tiny_wiki.xml"


def test_only_main_namespace_articles_without_redirects() -> None:
    titles = [raw.title for raw in iter_wiki_pages(str(WIKI))]
    assert titles == ["Lighthouse", "Bread", "Long River", "Clock"]  # no redirect, talk or category page


def test_bz2_dump_streams_the_same_pages(tmp_path: Path) -> None:
    packed = tmp_path / "dump.xml.bz2"
    packed.write_bytes(bz2.compress(WIKI.read_bytes()))
    assert [r.text for r in iter_wiki_pages(str(packed))] == [r.text for r in iter_wiki_pages(str(WIKI))]


def test_wikitext_keeps_body_prose_only() -> None:
    raw = next(iter_wiki_pages(str(WIKI)))
    text = "\n".join(wikitext_paragraphs(raw.text))
    assert text.startswith("A lighthouse is a tower that sends out light to guide ships at sea. The first")
    assert "historians of the coast and of merchant shipping." in text  # link text kept
    for gone in ("Infobox", "cite book", "Keepers of the Coast", "thumb", "Harbour light.jpg", "Lenses",
                 "fixed white light", "wikitable", "31 m", "Museum guide", "See also", "Beacon", "Towers",
                 "Leuchtturm", "[[", "{{", "<ref", "'''", "|"):  # fmt: skip
        assert gone not in text, gone
    assert "Today most lighthouses run on their own" in text  # prose after the table survives


def test_numbered_lists_and_inline_templates_are_dropped() -> None:
    bread = next(r for r in iter_wiki_pages(str(WIKI)) if r.title == "Bread")
    text = "\n".join(wikitext_paragraphs(bread.text))
    assert "white loaf" not in text and "Bread notes" not in text
    assert "A good crust forms when steam fills the oven" in text


@pytest.mark.parametrize(
    ("paragraph", "expected"),
    [
        ("It rained. Then it stopped! Did it? Yes.", ["It rained.", "Then it stopped!", "Did it?", "Yes."]),
        ("Dr. Watson met Mr. Holmes. They met.", ["Dr. Watson met Mr. Holmes.", "They met."]),
        ("J. R. R. Tolkien wrote it. It sold well.", ["J. R. R. Tolkien wrote it.", "It sold well."]),
        ('He said "Go home." She left.', ['He said "Go home."', "She left."]),
        ("Values, e.g. ten, vary. fine", ["Values, e.g. ten, vary. fine"]),
    ],
)  # fmt: skip
def test_split_sentences(paragraph: str, expected: list[str]) -> None:
    assert split_sentences(paragraph) == expected


def test_book_is_one_document_of_paragraph_sentences() -> None:
    raw = read_book(str(ASSETS / "books" / "the_garden.txt"))
    assert raw.title == "the_garden" and raw.kind == "book"
    assert clean_document(raw, min_sentence_chars=8).sentences[0] == "The Garden"
    doc = clean_document(raw, min_sentence_chars=12)  # the title line is now too short to keep
    assert doc.sentences[0] == (
        "Anna had lived in the small house by the canal for eleven years before she noticed the garden."
    )
    assert doc.sentences[-1].startswith("The pear trees flowered") and len(doc.sentences) > 20
    assert book_paragraphs("a\nb\n\n\n c \r\n") == ["a b", "c"]


def test_book_must_be_utf8(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\u00e9 au lait. Tr\u00e8s bien.".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 \(invalid byte at offset 3\)"):
        read_book(str(latin1))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(DataError, match="empty file"):
        read_book(str(empty))
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffHello there friend.".encode())
    assert read_book(str(bom)).text == "Hello there friend."


def test_malformed_dump_keeps_pages_before_the_error(tmp_path: Path) -> None:
    text = WIKI.read_text()
    broken = tmp_path / "broken.xml"
    broken.write_text(text[: text.index("<title>Long River")] + "<ns>0</ns><revision><text>cut off")
    seen = []
    with pytest.raises(DataError, match="malformed dump after 4 pages"):
        for raw in iter_wiki_pages(str(broken)):
            seen.append(raw.title)
    assert seen == ["Lighthouse", "Bread"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"plain words, no XML", "malformed dump at the start"),
     (b"<mediawiki></mediawiki>", "malformed dump at the start .*siteinfo"),
     (b"<mediawiki><siteinfo><sitename>x</sitename></siteinfo></mediawiki>", "dump holds no pages")],
)  # fmt: skip
def test_bad_dumps(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "dump.xml"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(iter_wiki_pages(str(path)))


def test_not_bz2_data(tmp_path: Path) -> None:
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(b"this is not bzip2")
    with pytest.raises(DataError, match="malformed dump at the start"):
        list(iter_wiki_pages(str(path)))


def test_expand_inputs_resolves_packages_and_globs(tmp_path: Path) -> None:
    gensim_dump = (
        "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    assert Path(resolve_path(gensim_dump)).is_file()
    files, missing = expand_inputs(
        [
            str(ASSETS / "books" / "*.txt"),
            str(tmp_path / "nope.txt"),
            "pkg://no_such_pkg_x/a.txt",
            str(tmp_path / "*.xml"),
        ]
    )
    assert [Path(f).name for f in files] == ["hamlet_act1.txt", "hamlet_act3.txt", "the_garden.txt"]
    assert [m["path"] for m in missing] == [
        str(tmp_path / "nope.txt"),
        "pkg://no_such_pkg_x/a.txt",
        str(tmp_path / "*.xml"),
    ]
    assert missing[0]["reason"] == "not found"
    assert "not installed" in missing[1]["reason"]


def test_a_book_of_binary_content_is_refused_with_a_reason(tmp_path):
    zeros = tmp_path / "zeros.txt"
    zeros.write_bytes(b"\x00" * 4096)
    with pytest.raises(DataError, match=r"^binary content, not text \(NUL byte at offset 0\)$"):
        read_book(str(zeros))
    png = tmp_path / "image.txt"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match="offset 8"):
        read_book(str(png))
