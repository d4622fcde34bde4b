"""Users' own corpora: JSONL, Parquet and plain-text directories, plain or gz/bz2/zst compressed.

Bad records are skipped and counted (one line naming how many and the first few), good ones kept.
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bertscale.data_pipeline.corpora import expand_text_inputs, iter_jsonl, iter_parquet, read_text_file
from bertscale.data_pipeline.schema import load_manifest
from bertscale.errors import DataError

TEXTS = [
    "The king is dead. Long live the king. The court of Denmark mourns him in black.",
    "Something is rotten in the state of Denmark. The watch has seen a ghost on the walls.",
    "To be, or not to be, that is the question. Whether it is nobler in the mind to suffer.",
]
COMPRESSORS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_jsonl_any_compression_skips_and_counts_bad_lines(tmp_path: Path, suffix: str) -> None:
    lines = [json.dumps({"text": TEXTS[0], "id": 1}), "{not json", json.dumps({"body": "x"}), ""]
    lines += [json.dumps({"text": TEXTS[1]}), json.dumps({"text": 7}), json.dumps(["text"])]
    lines += [json.dumps({"text": TEXTS[2]})]
    path = tmp_path / f"corpus.jsonl{suffix}"
    path.write_bytes(COMPRESSORS[suffix]("\n".join(lines).encode()))
    docs = []
    with pytest.raises(DataError) as err:
        for doc in iter_jsonl(str(path), "text"):
            docs.append(doc)
    assert [d.text for d in docs] == TEXTS  # every good line, in order
    assert [d.title for d in docs] == ["corpus.jsonl" + suffix + f":{n}" for n in (1, 5, 8)]
    message = str(err.value)
    assert message.startswith("4 of 7 lines skipped (line 2: not JSON; line 3: no string field 'text';")
    assert "\n" not in message


def test_jsonl_other_field_and_clean_file_raise_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"body": t}) for t in TEXTS) + "\n", encoding="utf-8")
    assert [d.text for d in iter_jsonl(str(path), "body")] == TEXTS
    path.write_bytes(b"")
    with pytest.raises(DataError, match="holds no records"):
        list(iter_jsonl(str(path), "body"))
    truncated = tmp_path / "t.jsonl.gz"
    truncated.write_bytes(gzip.compress(path.read_bytes() + b"x" * 100)[:-8])
    with pytest.raises(DataError, match="unreadable after"):
        list(iter_jsonl(str(truncated), "body"))


def test_parquet_rows_nulls_counted_missing_column_and_junk_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [TEXTS[0], None, TEXTS[1], TEXTS[2]], "n": [1, 2, 3, 4]}), path)
    docs = []
    with pytest.raises(DataError, match=r"^1 of 4 rows skipped \(row 2: null\)$"):
        for doc in iter_parquet(str(path), "text"):
            docs.append(doc)
    assert [d.text for d in docs] == TEXTS
    with pytest.raises(DataError, match=r"has no column 'body' \(columns: text, n\)"):
        list(iter_parquet(str(path), "body"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(iter_parquet(str(junk), "text"))


def test_text_directories_are_walked_and_files_decompressed(tmp_path: Path) -> None:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(TEXTS[0], encoding="utf-8")
    (root / "sub" / "b.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXTS[1].encode()))
    (root / "sub" / "c.txt.gz").write_bytes(gzip.compress(TEXTS[2].encode()))
    (root / ".hidden").write_text("no", encoding="utf-8")
    files, missing = expand_text_inputs([str(root), str(tmp_path / "nowhere")])
    assert [Path(f).relative_to(root).as_posix() for f in files] == ["a.txt", "sub/b.txt.zst", "sub/c.txt.gz"]
    assert missing == [{"path": str(tmp_path / "nowhere"), "reason": "not found"}]
    docs = [read_text_file(f) for f in files]
    assert [d.text for d in docs] == TEXTS and [d.title for d in docs] == ["a", "b", "c"]
    (root / "bad.txt").write_bytes(b"\xff\xfebad")
    with pytest.raises(DataError, match="not UTF-8"):
        read_text_file(str(root / "bad.txt"))
    (root / "zeros.txt").write_bytes(b"\x00" * 64)  # binary content is refused as books are
    with pytest.raises(DataError, match="binary content"):
        read_text_file(str(root / "zeros.txt"))


@pytest.mark.slow
def test_pipeline_reads_users_corpora_and_records_skips(tiny_config, tmp_path: Path) -> None:
    """Real Ray: JSONL (with bad lines), Parquet and a text directory → shards; skips in the manifest."""
    from bertscale.data_pipeline.run import run_pipeline

    book = (Path(__file__).parents[1] / "assets" / "books" / "hamlet_act1.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in book.split("\n\n") if len(p) > 200]
    half = len(paragraphs) // 2
    jsonl = tmp_path / "c.jsonl.gz"
    lines = [json.dumps({"text": p}) for p in paragraphs[:half]] + ["{broken"]
    jsonl.write_bytes(gzip.compress("\n".join(lines).encode()))
    pq.write_table(pa.table({"text": paragraphs[half:]}), tmp_path / "c.parquet")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "story.txt.bz2").write_bytes(bz2.compress("\n\n".join(paragraphs).encode()))
    cfg = tiny_config(
        tmp_path / "out", inputs__wiki=[], inputs__books=[], inputs__jsonl=[str(jsonl)],
        inputs__parquet=[str(tmp_path / "c.parquet")], inputs__text=[str(tmp_path / "dir")],
        tokenizer__vocab_size=300, split__samples_per_shard=4,
    )  # fmt: skip
    manifest = load_manifest(run_pipeline(cfg))
    assert manifest.inputs["documents"] == len(paragraphs) + 1
    [skip] = manifest.skipped  # the good lines of that file were kept and counted above
    assert skip["path"] == str(jsonl)
    assert skip["reason"].startswith(f"1 of {half + 1} lines skipped (line {half + 1}: not JSON)")
    assert manifest.splits["train"].samples > 0
