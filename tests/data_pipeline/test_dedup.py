"""Deduplication (exact + MinHash LSH) and the contamination report: counts, and what is kept."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from bertscale.config import ConfigError
from bertscale.data_pipeline import dedup, spill
from bertscale.data_pipeline.config import DedupConfig

ASSETS = Path(__file__).parents[1] / "assets"


def _paragraphs() -> list[list[str]]:
    """Real text: blocks of 30 non-empty lines of the test books, one document each."""
    lines = [ln for p in sorted((ASSETS / "books").glob("*.txt")) for ln in p.read_text().splitlines() if ln]
    return [lines[i : i + 30] for i in range(0, len(lines) - 30, 30)]


def test_collisions_find_exact_and_near_duplicates_of_earlier_documents(tmp_path: Path) -> None:
    docs = _paragraphs()
    n = len(docs)
    assert n > 20
    near = [*docs[3][:-1], docs[3][-1] + " and one word more"]  # one sentence of thirty changed
    corpus = [*docs, list(docs[5]), near]  # n: exact copy of 5, n + 1: near copy of 3
    files = [tmp_path / "clean-a.bin", tmp_path / "clean-b.bin"]
    spill.write_documents(files[0], corpus[:10])
    spill.write_documents(files[1], corpus[10:])
    cfg = DedupConfig(exact=True, near=True)
    sigs = [tmp_path / "sig-0.npz", tmp_path / "sig-1.npz"]
    assert [dedup.signatures([f], cfg, 7, s) for f, s in zip(files, sigs, strict=True)] == [
        10,
        len(corpus) - 10,
    ]
    bands, rows = dedup.lsh_bands(cfg)
    assert dedup.collisions(sigs, 0, 0, rows, True).tolist() == [n]
    by_band = [dedup.collisions(sigs, b, b + 1, rows, False) for b in range(bands)]
    assert np.unique(np.concatenate(by_band)).tolist() == [n, n + 1]
    assert dedup.collisions(sigs, 0, bands, rows, False).tolist() == [n, n + 1]  # all bands in one task
    # the same candidates as datasketch's own index, queried before each insert
    lsh, template = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm), MinHash(cfg.num_perm, seed=7)
    expected = []
    for i, doc in enumerate(corpus):
        m = template.copy()
        m.update_batch(list(dedup.shingles(" ".join(doc), cfg.shingle_words)))
        if lsh.query(m):
            expected.append(i)
        lsh.insert(str(i), m)
    assert expected == [n, n + 1]


def test_threshold_out_of_range_is_one_config_line(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'dedup.threshold' must be in \(0, 1\), got 1.5$"):
        tiny_config(tmp_path / "out", dedup__near=True, dedup__threshold=1.5)


def test_pipeline_drops_duplicates_and_keeps_the_rest_byte_identical(
    tiny_config, tiny_shards: Path, tmp_path: Path
) -> None:
    """The tiny corpus plus, after it, an exact copy of one book and a near copy of another: with
    dedup on, the copies go (counted in the manifest) and the shards are tiny_shards' bytes."""
    from bertscale.data_pipeline.run import run_pipeline
    from bertscale.data_pipeline.schema import load_manifest

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "z1_copy.txt").write_bytes((ASSETS / "books" / "the_garden.txt").read_bytes())
    act1 = (ASSETS / "books" / "hamlet_act1.txt").read_text()
    (extra / "z2_near.txt").write_text(act1.replace("Ghost", "Spirit", 1))
    test_file = tmp_path / "test.txt"
    line = " ".join(act1.split()[200:240])
    invented = "an invented sentence that is found in no book of this corpus at all none"
    test_file.write_text(f"{line}\n{invented}\n")
    cfg = tiny_config(
        tmp_path / "dedup",
        inputs__books=[str(ASSETS / "books" / "*.txt"), str(extra / "*.txt")],
        dedup__exact=True,
        dedup__near=True,
        dedup__contamination=[str(test_file)],
    )
    manifest = load_manifest(run_pipeline(cfg))
    assert manifest.inputs["exact_duplicates"] == 1 and manifest.inputs["near_duplicates"] == 1
    assert manifest.inputs["documents"] == 7
    for split in ("train", "validation"):
        expected = load_manifest(tiny_shards).splits[split].shards
        assert [s.sha256 for s in manifest.splits[split].shards] == [s.sha256 for s in expected]
    report = manifest.inputs["contamination"]
    grams = report["files"][str(test_file)]
    real, made_up = (len(re.findall(r"\w+", text)) - 12 for text in (line, invented))
    assert grams["ngrams"] == real + made_up
    assert 0.8 * real <= grams["found"] <= real  # the passage is found (cleaning may cut a few)
    assert report["documents"] == 1 and report["ngram"] == 13
