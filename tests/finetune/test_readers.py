"""Readers on small hand-made fixtures and on the datasets that ship in registry packages."""

from pathlib import Path

import pytest

from bertscale.errors import DataError
from bertscale.finetune.readers import (
    BUILTIN_DATASETS,
    SentenceExample,
    TaggedExample,
    infer_format,
    read_examples,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "finetune"


def test_csv_keeps_good_rows_and_names_bad_lines():
    path = ASSETS / "sentences.csv"
    result = read_examples(path, "csv")
    assert [ex.label for ex in result.examples] == ["pos", "neg", "pos", "pos"]
    assert result.examples[2].text == "A review that spans\ntwo lines and is still fine."
    assert [s.split(": ")[0] for s in result.skipped] == [f"{path}:{n}" for n in (6, 7, 8)]
    assert "empty or missing 'text'" in result.skipped[0]
    assert "empty or missing 'label'" in result.skipped[1]
    assert "expected 3 fields" in result.skipped[2]


def test_csv_fail_policy_raises_with_file_and_line():
    path = ASSETS / "sentences.csv"
    with pytest.raises(DataError, match=rf"^{path}:6: empty or missing 'text'"):
        read_examples(path, "csv", on_error="fail")


def test_tsv_sentence_pairs():
    path = ASSETS / "pairs.tsv"
    result = read_examples(path, "tsv", text_column="premise", text_pair_column="hypothesis")
    assert result.examples == [
        SentenceExample("A man plays a guitar.", "entailment", "Someone makes music."),
        SentenceExample("A cat sleeps.", "neutral", "A dog barks loudly."),
    ]
    assert len(result.skipped) == 1 and result.skipped[0].startswith(f"{path}:4:")


def test_missing_column_is_named():
    with pytest.raises(DataError, match=r"sentences.csv: header lacks column\(s\) \['review'\]"):
        read_examples(ASSETS / "sentences.csv", "csv", text_column="review")


def test_jsonl_skips_bad_json_and_non_objects():
    path = ASSETS / "sentences.jsonl"
    result = read_examples(path, "jsonl")
    assert [(ex.text, ex.label) for ex in result.examples] == [
        ("Loved every minute.", "pos"),
        ("Never again.", "neg"),
        ("A numeric label is read as text.", "1"),
    ]
    assert [s.split(": ")[0] for s in result.skipped] == [f"{path}:3", f"{path}:4"]
    assert "not valid JSON" in result.skipped[0] and "expected a JSON object" in result.skipped[1]


def test_fasttext():
    result = read_examples(ASSETS / "reviews.fasttext", "fasttext")
    assert result.examples == [
        SentenceExample("a warm , funny film .", "pos"),
        SentenceExample("flat and lifeless .", "neg"),
    ]
    assert result.skipped == [f"{ASSETS / 'reviews.fasttext'}:3: expected '__label__NAME text'"]


def test_conll_optimus_format_lone_tab_separators_and_bad_tag():
    path = ASSETS / "ner.conll"
    result = read_examples(path, "conll")
    assert result.examples == [
        TaggedExample(
            ["@paulwalk", "Empire", "State", "Building", "."],
            ["O", "B-facility", "I-facility", "I-facility", "O"],
        ),
        TaggedExample(["Pretty", "bad", "storm"], ["O", "O", "O"]),
        TaggedExample(["John", "Smith", "likes", "London"], ["B-person", "I-person", "O", "B-geo-loc"]),
    ]
    assert result.skipped == [f"{path}:12: tag 'BAD' is not BIO (O, B-TYPE or I-TYPE)"]
    with pytest.raises(DataError, match=rf"^{path}:12: tag 'BAD'"):
        read_examples(path, "conll", on_error="fail")


def test_conll2003_space_separated_tag_last_docstart_ignored():
    result = read_examples(ASSETS / "conll2003.txt", "conll")
    assert result.examples == [
        TaggedExample(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
        TaggedExample(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]


def test_missing_file_empty_result_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: dataset file not found"):
        read_examples(tmp_path / "nope.csv", "csv")
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("not json\n")
    with pytest.raises(
        DataError, match=r"bad.jsonl: no usable examples \(first problem: .*bad.jsonl:1: not valid"
    ):
        read_examples(only_bad, "jsonl")
    latin = tmp_path / "latin.fasttext"
    latin.write_bytes(b"__label__pos caf\xe9 \x97 good\n")
    with pytest.raises(DataError, match=r"latin\.fasttext: not utf-8 text"):
        read_examples(latin, "fasttext")
    assert read_examples(latin, "fasttext", encoding="cp1252").examples[0].text == "café — good"


def test_infer_format():
    assert infer_format(Path("x/train.csv.bz2")) == "csv"
    assert infer_format(Path("dev.tsv")) == "tsv"
    assert infer_format(Path("a.jsonl.gz")) == "jsonl"
    with pytest.raises(DataError, match=r"data\.weird: cannot tell the format"):
        infer_format(Path("data.weird"))


@pytest.mark.parametrize(
    ("name", "expected", "labels"),
    [
        ("rotten_tomatoes", 13891, {"fresh", "rotten", "plot"}),
        ("pang_lee", 200, {"pos", "neg"}),
        ("optimus_ner", 2394, None),
    ],
)
def test_builtin_datasets_are_found_and_read(name, expected, labels):
    spec = BUILTIN_DATASETS[name]
    path = spec.locate()
    assert "site-packages" in str(path) or "dist-packages" in str(path)
    result = read_examples(
        path,
        spec.format,
        text_column=spec.text_column,
        label_column=spec.label_column,
        encoding=spec.encoding,
    )
    assert len(result.examples) == expected
    if labels is not None:
        assert {ex.label for ex in result.examples} == labels
    else:
        tags = {t for ex in result.examples for t in ex.tags}
        assert "O" in tags and "B-person" in tags and len(tags) == 21
