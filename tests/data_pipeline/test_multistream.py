"""Multistream dumps: byte ranges read independently give exactly the documents of a plain read."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from bertscale.data_pipeline import multistream, sources
from bertscale.errors import DataError

ASSETS = Path(__file__).parents[1] / "assets"
GENSIM_DUMP = (
    "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)


@pytest.fixture(scope="module")
def gensim_xml() -> bytes:
    path = sources.resolve_path(GENSIM_DUMP)
    if not Path(path).is_file():
        pytest.skip("gensim's test dump is not installed (pip install 'bertscale[corpora]')")
    return bz2.decompress(Path(path).read_bytes())


@pytest.fixture(scope="module")
def plain(gensim_xml: bytes) -> list[tuple[str, str]]:
    """(title, wikitext) of every article of the plain single-stream dump."""
    return [_key(d) for d in sources.iter_wiki_pages(sources.resolve_path(GENSIM_DUMP))]


def _key(doc: sources.RawDocument) -> tuple[str, str]:
    return doc.title, doc.text


@pytest.mark.parametrize("pages_per_stream, parts", [(10, 7), (100, 2), (7, 1)])
def test_ranges_give_the_documents_of_a_plain_read(
    gensim_xml: bytes, plain: list[tuple[str, str]], tmp_path: Path, pages_per_stream: int, parts: int
) -> None:
    dump = multistream.write_multistream(gensim_xml, tmp_path, pages_per_stream)
    assert len(plain) == 106
    index = multistream.index_path(str(dump))
    assert index is not None
    offsets = multistream.stream_offsets(str(dump), index)
    assert len(offsets) == -(-206 // pages_per_stream)
    header = multistream.dump_header(str(dump))
    assert header.startswith(b"<mediawiki") and header.rstrip().endswith(b"</siteinfo>")
    ranges = multistream.plan_ranges(offsets, dump.stat().st_size, parts)
    assert len(ranges) == min(parts, len(offsets)) and ranges[-1][1] == dump.stat().st_size
    read = [_key(d) for a, b in ranges for d in multistream.range_pages(str(dump), a, b, header)]
    assert read == plain


def test_an_index_of_another_dump_is_one_clear_error(gensim_xml: bytes, tmp_path: Path) -> None:
    dump = multistream.write_multistream(gensim_xml, tmp_path, 10)
    other = tmp_path / "other"
    other.mkdir()
    multistream.write_multistream(gensim_xml, other, 13)  # same pages, other stream boundaries
    with pytest.raises(
        DataError, match=r"-index.txt.bz2: does not match enwiki-.*\(offset \d+ is not the start"
    ):
        multistream.stream_offsets(str(dump), next(other.glob(f"*{multistream.INDEX_SUFFIX}")))
    (tmp_path / "junk-index.txt.bz2").write_bytes(b"not bz2")
    with pytest.raises(DataError, match=r"junk-index\.txt\.bz2: unreadable multistream index"):
        multistream.stream_offsets(str(dump), tmp_path / "junk-index.txt.bz2")


# --- through the pipeline (real Ray) --------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _hashes(output: Path) -> dict[str, list[str]]:
    from bertscale.data_pipeline.schema import load_manifest

    manifest = load_manifest(output)
    return {name: [s.sha256 for s in split.shards] for name, split in manifest.splits.items()}


def test_pipeline_reads_a_multistream_dump_like_the_plain_one(
    local_ray, tiny_config, tiny_shards: Path, tmp_path: Path, capfd
) -> None:
    """tests/assets/tiny_wiki.xml as a multistream dump of one page per stream (several ranges, one
    task each) gives the plain read's shards; an index of another dump falls back to one stream."""
    from bertscale.data_pipeline.run import run_pipeline

    dump = multistream.write_multistream((ASSETS / "tiny_wiki.xml").read_bytes(), tmp_path, 1, name="tiny")
    cfg = tiny_config(tmp_path / "multi", inputs__wiki=[str(tmp_path / "*.bz2")])  # the index matches too
    assert _hashes(run_pipeline(cfg)) == _hashes(tiny_shards)
    assert "warning" not in capfd.readouterr().err

    index = next(tmp_path.glob(f"*{multistream.INDEX_SUFFIX}"))
    other = tmp_path / "other"
    other.mkdir()
    multistream.write_multistream((ASSETS / "tiny_wiki.xml").read_bytes(), other, 2, name="tiny")
    next(other.glob(f"*{multistream.INDEX_SUFFIX}")).replace(index)  # the index of another layout
    assert _hashes(run_pipeline(tiny_config(tmp_path / "fallback", inputs__wiki=[str(dump)]))) == _hashes(
        tiny_shards
    )
    warnings = [line for line in capfd.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"{index}: does not match tiny-pages-articles" in warnings[0]
    assert warnings[0].endswith(f"{dump} is read as one stream")


def test_max_documents_counts_raw_documents_in_input_order(local_ray, tiny_config, tmp_path: Path) -> None:
    """The cap crosses files read by different tasks: the first N documents in input order are kept."""
    from bertscale.data_pipeline.run import run_pipeline
    from bertscale.data_pipeline.schema import load_manifest

    cfg = tiny_config(tmp_path / "cap", inputs__max_documents=6, split__samples_per_shard=4)
    assert load_manifest(run_pipeline(cfg)).inputs["documents"] == 6  # 4 articles + the first 2 books
