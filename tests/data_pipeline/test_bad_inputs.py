"""Bad inputs: skipped with a reason (good input kept and counted), or one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

from bertscale.data_pipeline.run import run_pipeline
from bertscale.data_pipeline.schema import load_manifest
from bertscale.errors import ConfigError, DataError

ASSETS = Path(__file__).parents[1] / "assets"
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance for the module; run_pipeline reuses it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    wiki = (ASSETS / "tiny_wiki.xml").read_text()
    files = {
        "truncated": tmp_path / "truncated.xml",
        "empty_dump": tmp_path / "empty.xml",
        "latin1": tmp_path / "latin1.txt",
        "empty_book": tmp_path / "empty.txt",
    }
    files["truncated"].write_text(wiki[: wiki.index("<title>Long River")] + "<ns>0</ns><revision><text>cut")
    files["empty_dump"].write_bytes(b"")
    files["latin1"].write_bytes("Un caf\u00e9 tr\u00e8s chaud. Il fait froid dehors.".encode("latin-1"))
    files["empty_book"].write_text("\n")
    return files


def test_bad_inputs_are_skipped_recorded_and_good_ones_kept(
    local_ray, tiny_config, bad_files, tmp_path, capfd
):
    missing = str(tmp_path / "missing.xml.bz2")
    cfg = tiny_config(
        tmp_path / "out",
        inputs__wiki=[
            str(ASSETS / "tiny_wiki.xml"),
            str(bad_files["truncated"]),
            str(bad_files["empty_dump"]),
            missing,
        ],
        inputs__books=[
            str(ASSETS / "books" / "*.txt"),
            str(bad_files["latin1"]),
            str(bad_files["empty_book"]),
        ],
    )
    manifest = load_manifest(run_pipeline(cfg))
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest.skipped}
    assert reasons == {
        "missing.xml.bz2": "not found",
        "truncated.xml": reasons["truncated.xml"],
        "empty.xml": "empty file",
        "latin1.txt": "not UTF-8 (invalid byte at offset 6)",
        "empty.txt": "empty file",
    }
    assert reasons["truncated.xml"].startswith("malformed dump after 4 pages")
    assert reasons["truncated.xml"].endswith("(2 articles before it kept)")
    # 4 articles + 2 kept from the truncated dump + 3 books
    assert manifest.inputs["documents"] == 9
    assert manifest.splits["train"].samples > 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 5
    assert any(
        w == f"warning: {bad_files['latin1']}: not UTF-8 (invalid byte at offset 6); skipped"
        for w in warnings
    )


def test_on_bad_input_fail_names_the_file(local_ray, tiny_config, bad_files, tmp_path):
    cfg = tiny_config(tmp_path / "out", on_bad_input="fail", inputs__books=[str(bad_files["latin1"])])
    with pytest.raises(DataError, match=r"latin1.txt: not UTF-8 \(invalid byte at offset 6\)"):
        run_pipeline(cfg)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_no_documents_at_all(local_ray, tiny_config, bad_files, tmp_path):
    cfg = tiny_config(tmp_path / "out", inputs__wiki=[str(bad_files["empty_dump"])], inputs__books=[])
    with pytest.raises(DataError, match="no documents with text in any input"):
        run_pipeline(cfg)


def test_refuses_a_non_empty_output_dir_and_overwrite_keeps_other_files(local_ray, tiny_config, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "train-000999.tar").write_bytes(b"stale shard of an earlier run")
    with pytest.raises(ConfigError, match=r"output_dir: .*precious is not empty .*overwrite=true"):
        run_pipeline(tiny_config(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train-000999.tar"]
    manifest = load_manifest(run_pipeline(tiny_config(out, overwrite=True)))
    assert (out / "notes.txt").read_text() == "keep me"
    shards = {s.name for split in manifest.splits.values() for s in split.shards}
    assert {p.name for p in out.iterdir()} == shards | {"notes.txt", "manifest.json", "tokenizer.model"}


def test_output_dir_may_not_hold_the_inputs(tiny_config, tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text("A sentence of a book. Another one follows it here.")
    for out in (tmp_path, books):
        with pytest.raises(ConfigError, match=f"output_dir: {out} contains the input {books / 'a.txt'}"):
            run_pipeline(tiny_config(out, inputs__books=[str(books / "*.txt")], overwrite=True))
    assert (books / "a.txt").is_file()


def test_too_few_samples_for_a_shard_is_a_clear_error(local_ray, tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "out", split__samples_per_shard=100_000)
    with pytest.raises(DataError, match=r"split 'train' has \d+ samples, fewer than split.samples_per_shard"):
        run_pipeline(cfg)


def test_pad_remainder_fills_the_last_shard(local_ray, tiny_config, tmp_path):
    cfg = tiny_config(tmp_path / "out", split__remainder="pad", split__samples_per_shard=50)
    manifest = load_manifest(run_pipeline(cfg))
    for split in manifest.splits.values():
        assert [s.samples for s in split.shards] == [50] * len(split.shards)
    assert manifest.dropped_samples == {"train": 0, "validation": 0}
    assert (
        manifest.splits["train"].samples + manifest.splits["validation"].samples >= manifest.inputs["pairs"]
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertscale.data_pipeline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
def test_cli_config_errors_are_one_line(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nope.yaml'}: config file not found\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs:\n  max_seq_lenght: 64\n")
    result = run_cli("--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: unknown key 'pairs.max_seq_lenght' (did you mean 'pairs.max_seq_length'?)"
    ]


@pytest.mark.slow
def test_cli_builds_the_embedded_demo_corpus(tmp_path):
    """No --config: the embedded demo corpus (configs/demo.yaml), end to end through the CLI."""
    result = run_cli(f"output_dir={tmp_path / 'demo'}", "progress=false")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {tmp_path / 'demo'} (train: ")
    manifest = load_manifest(tmp_path / "demo")
    assert manifest.inputs["documents"] >= 100 and manifest.vocab_size == 8000
    assert manifest.splits["train"].samples >= 4000 and manifest.skipped == []
    assert 0.45 < manifest.inputs["random_next_fraction"] < 0.55
    read = manifest.inputs["sources"]  # every input of demo.yaml recorded with its documents
    assert read["r://tokenizers/mobydick"] == 135  # chapters
    assert read["r://janeaustenr"] == 269  # the chapters of six novels
    assert sum(n for k, n in read.items() if k.endswith("lee_background.cor")) == 300


def test_a_given_tokenizer_is_reused(local_ray, tiny_config, tiny_shards, tmp_path):
    cfg = tiny_config(tmp_path / "out", tokenizer__model_path=str(tiny_shards / "tokenizer.model"))
    reused, original = load_manifest(run_pipeline(cfg)), load_manifest(tiny_shards)
    assert reused.tokenizer_sha256 == original.tokenizer_sha256
    assert [s.sha256 for s in reused.splits["train"].shards] == [
        s.sha256 for s in original.splits["train"].shards
    ]
    (tmp_path / "bad.model").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=r"bad.model: not a SentencePiece model"):
        run_pipeline(tiny_config(tmp_path / "out2", tokenizer__model_path=str(tmp_path / "bad.model")))


def test_whole_word_masking_end_to_end(local_ray, tiny_config, tmp_path):
    import sentencepiece as spm

    from bertscale.data_pipeline.schema import read_shard

    out = run_pipeline(tiny_config(tmp_path / "wwm", pairs__whole_word_masking=True))
    manifest = load_manifest(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    starts = np.array([sp.id_to_piece(i).startswith("\u2581") for i in range(sp.get_piece_size())])
    whole, total = 0, 0
    for path in manifest.shard_paths(out, "train"):
        for s in read_shard(path):
            for row in s.masked_positions:
                chosen = set(row.tolist())
                # a masked continuation piece has its word's previous piece masked too, except in at
                # most one word per draw (cut to meet the exact count) or right after [CLS]/[SEP]
                orphans = [
                    p
                    for p in chosen
                    if not starts[s.input_ids[p]] and s.input_ids[p - 1] > 4 and p - 1 not in chosen
                ]
                whole += len(orphans) == 0
                total += 1
    assert total > 200 and whole / total > 0.9


def test_every_node_must_see_the_output_directory(local_ray, tmp_path):
    """The start-up check runs a task on every Ray node: here one node, which sees the directory; a
    marker a node cannot read is reported with the reason that node found."""
    from bertscale.data_pipeline.run import _sees_task, check_shared

    check_shared(tmp_path, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the marker is gone
    assert ray.get(_sees_task.remote(str(tmp_path / "absent"), "token")) == "No such file or directory"
    (tmp_path / "marker").write_text("another")
    assert ray.get(_sees_task.remote(str(tmp_path / "marker"), "token")) == "it holds another run's marker"
