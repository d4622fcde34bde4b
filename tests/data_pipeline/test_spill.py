"""The spill files that keep the driver's memory bounded: exact round trips, idempotent writes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from bertscale.data_pipeline import spill, stages
from bertscale.data_pipeline.config import PairsConfig, TokenizerConfig
from bertscale.data_pipeline.instances import Corpus, SampleRecipe
from bertscale.data_pipeline.shards import plan_shards, write_shard
from bertscale.data_pipeline.stages import build_samples, encode_documents, encode_files, sample_blocks
from bertscale.data_pipeline.tokenizer import processor, special_tokens, train_tokenizer, word_start_table

ASSETS = Path(__file__).parents[1] / "assets"

DOCUMENTS = [
    [
        "First sentence of one.",
        "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9.",
        "Tabs\tand\rcarriage returns.",
    ],
    ["Only one here, with an emoji \U0001f600 outside the BMP."],
    ["Line one.\nStill line one?", "", "After an empty sentence."],
]


def _book_documents() -> list[list[str]]:
    """Real text: each book's lines as sentences, cut into documents of 40 lines."""
    lines = [ln for p in sorted((ASSETS / "books").glob("*.txt")) for ln in p.read_text().splitlines() if ln]
    return [lines[i : i + 40] for i in range(0, len(lines), 40)]


def test_documents_round_trip_exactly(tmp_path: Path) -> None:
    path = tmp_path / "clean-000000.bin"
    assert spill.write_documents(path, DOCUMENTS) == 7
    assert spill.read_documents(path) == DOCUMENTS
    spill.write_documents(path, [])  # a batch whose documents all lost their text
    assert spill.read_documents(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["clean-000000.bin"]  # no temporaries left


def test_spill_file_publishes_nothing_on_failure(tmp_path: Path) -> None:
    """A task killed mid-write (here: an exception) leaves the old file or none, never half of one."""
    path = tmp_path / "records-000000.bin"
    with pytest.raises(RuntimeError), spill.spill_file(path) as f:
        f.write(b"half")
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []
    with spill.spill_file(path) as f:
        f.write(b"whole")
    with pytest.raises(RuntimeError), spill.spill_file(path) as f:
        f.write(b"retry, interrupted")
        raise RuntimeError("worker died again")
    assert path.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("cap", [1_000_000, 300])  # all sentences, and the seeded sample of them
def test_tokenizer_trained_from_the_spill_equals_from_a_list(tmp_path: Path, cap: int) -> None:
    documents = _book_documents()
    cut = len(documents) // 3
    files = [tmp_path / "clean-000000.bin", tmp_path / "clean-000001.bin", tmp_path / "clean-000002.bin"]
    counts = [
        spill.write_documents(f, d)
        for f, d in zip(files, [documents[:cut], [], documents[cut:]], strict=True)
    ]
    sentences = [s for doc in documents for s in doc]
    spilled = spill.SpilledSentences(files, counts)
    assert len(spilled) == len(sentences) > 300  # so cap=300 trains on a sample
    assert list(spilled) == sentences
    assert [spilled[i] for i in (len(sentences) - 1, 0, 5, cut * 40 + 1)] == [
        sentences[i] for i in (len(sentences) - 1, 0, 5, cut * 40 + 1)
    ]
    with pytest.raises(IndexError):
        spilled[len(sentences)]
    cfg = TokenizerConfig(vocab_size=300, input_sentence_size=cap)
    assert train_tokenizer(spilled, cfg, seed=3) == train_tokenizer(sentences, cfg, seed=3)


@pytest.fixture(scope="module")
def model() -> bytes:
    sentences = [s for doc in _book_documents() for s in doc]
    return train_tokenizer(sentences, TokenizerConfig(vocab_size=300), seed=0)


def test_encoded_parts_join_to_the_in_memory_corpus(tmp_path: Path, model: bytes) -> None:
    documents = [*_book_documents(), ["", ""]]  # the last document encodes to nothing: dropped
    groups = [documents[:2], documents[2:3], [], documents[3:]]
    files = [tmp_path / f"clean-{i:06d}.bin" for i in range(len(groups))]
    for f, group in zip(files, groups, strict=True):
        spill.write_documents(f, group)
    counts = [encode_files(model, files[:2], tmp_path, 0), encode_files(model, files[2:], tmp_path, 1)]
    num_sentences, ranges = stages.join_corpus(tmp_path, 2, 3)

    expected = Corpus.from_encoded(*encode_documents(model, documents))
    assert num_sentences == len(expected.sentence_offsets) - 1
    assert expected.num_documents == len(documents) - 1
    joined = spill.load_corpus(tmp_path)
    assert isinstance(joined.tokens, np.memmap)
    for name in ("tokens", "sentence_offsets", "document_offsets"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(expected, name), err_msg=name)
    doc_tokens = np.diff(expected.sentence_offsets[expected.document_offsets])
    assert [sum(c) for c in zip(*counts, strict=True)] == [len(doc_tokens), doc_tokens.sum()]
    # document ranges for the pairs stage: contiguous, covering, of about equal tokens
    assert ranges[0][0] == 0 and ranges[-1][1] == len(doc_tokens) and len(ranges) == 3
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    per_range = [doc_tokens[a:b].sum() for a, b in ranges]
    assert max(per_range) - min(per_range) <= 2 * doc_tokens.max()


def test_trimming_keeps_the_documents_of_the_first_raw_documents(tmp_path: Path) -> None:
    """A cap on raw documents (inputs.max_documents) cuts a clean file by raw index: documents
    that lost their text still count as read."""
    path = tmp_path / "clean-000000-000000.bin"
    spill.write_documents(path, DOCUMENTS, np.array([0, 2, 3]))  # raw document 1 had no text
    assert spill.trim_documents(path, 3) == (2, 4)
    assert spill.read_documents(path) == DOCUMENTS[:2]


def test_spilled_records_equal_in_memory_records(
    tmp_path: Path, model: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records a samples task leaves in its file, read back by pread, are the in-memory bytes;
    shards written from either are identical (padding repeats included: keys come from the records)."""
    documents = _book_documents()
    corpus = Corpus.from_encoded(*encode_documents(model, documents))
    n = corpus.num_documents
    cfg = PairsConfig(max_seq_length=32, dupe_factor=2, max_predictions_per_seq=5)
    word_start = word_start_table(processor(model))
    recipe = SampleRecipe(cfg, np.arange(n), special_tokens(processor(model)), 7, word_start)
    args = (corpus, 1, n - 1, recipe)
    monkeypatch.setattr(stages, "BUILD_BLOCK_TOKENS", 500)  # several blocks, so the file holds more than one
    assert len(list(sample_blocks(*args))) > 3
    in_memory = build_samples(*args)
    spilled = spill.spill_records(sample_blocks(*args), tmp_path / "records-000000.bin")
    assert len(spilled) == len(in_memory) > 50
    assert all(bytes(spilled.records(i)) == bytes(in_memory.records(i)) for i in range(len(spilled)))
    for name in ("doc_ids", "num_tokens", "labels"):
        np.testing.assert_array_equal(getattr(spilled, name), getattr(in_memory, name))
    order = np.random.default_rng(0).permutation(len(spilled))
    plans, _ = plan_shards(order[: len(order) // 2 + 3], len(order) // 2, "pad", "train")
    plan = plans[-1]
    assert plan.repeats_from == 3 < len(plan.indices)  # the padded shard
    for label, batch in (("memory", in_memory), ("spill", spilled)):
        write_shard(tmp_path / f"{label}.tar", batch, plan)
    spilled.close()
    assert (tmp_path / "memory.tar").read_bytes() == (tmp_path / "spill.tar").read_bytes()
