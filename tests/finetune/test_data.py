"""Tokenisation, subword/label alignment, splits and batches, pinned exactly."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.errors import DataError
from bertscale.finetune.config import DatasetConfig
from bertscale.finetune.data import (
    IGNORE_INDEX,
    Features,
    align_word_labels,
    collate,
    encode_sentence,
    eval_batches,
    label_list,
    load_task_data,
    load_tokenizer,
    split_indices,
    train_batches,
    truncate_longest_first,
)
from bertscale.finetune.readers import SentenceExample, TaggedExample

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "finetune"
X = IGNORE_INDEX
SPECIAL = trained_special(600)  # the fixture tokenizer's layout
CLS_ID, PAD_ID, SEP_ID, UNK_ID = SPECIAL.cls_id, SPECIAL.pad_id, SPECIAL.sep_id, SPECIAL.unk_id


def test_alignment_first_piece_labelled_rest_ignored():
    pieces = [[10], [11, 12, 13], [14, 15], []]  # the last word tokenises to nothing
    ids, labels, cut = align_word_labels(pieces, [0, 1, 2, 0], max_seq_length=32, special=SPECIAL)
    assert ids == [CLS_ID, 10, 11, 12, 13, 14, 15, UNK_ID, SEP_ID]
    assert labels == [X, 0, 1, X, X, 2, X, 0, X]
    assert cut == 0


def test_alignment_truncation_keeps_whole_budget_and_counts_cut_words():
    pieces = [[10], [11, 12, 13], [14, 15]]
    ids, labels, cut = align_word_labels(pieces, [0, 1, 2], max_seq_length=4, special=SPECIAL)
    assert ids == [CLS_ID, 10, 11, SEP_ID]  # the second word is cut to its first piece, still labelled
    assert labels == [X, 0, 1, X]
    assert cut == 1
    ids, labels, cut = align_word_labels(pieces, [0, 1, 2], max_seq_length=3, special=SPECIAL)
    assert ids == [CLS_ID, 10, SEP_ID] and labels == [X, 0, X] and cut == 2


def test_alignment_with_real_sentencepiece(tokenizer_path):
    sp = load_tokenizer(tokenizer_path)
    words = ["Empire", "State", "Building", "extraordinarily", "."]
    pieces = sp.encode(words, out_type=int)
    assert any(len(p) > 1 for p in pieces), "the fixture should contain a multi-piece word"
    ids, labels, _ = align_word_labels(pieces, [1, 2, 2, 0, 0], max_seq_length=64, special=SPECIAL)
    assert ids == [CLS_ID, *(i for p in pieces for i in p), SEP_ID]
    scored = [i for i, label in enumerate(labels) if label != X]
    starts = np.cumsum([1] + [len(p) for p in pieces[:-1]]).tolist()
    assert scored == starts
    assert [labels[i] for i in scored] == [1, 2, 2, 0, 0]
    # every word piece list starts with a word-start piece, so the labelled token is the word's start
    assert all(sp.processor.id_to_piece(ids[i]).startswith("\u2581") for i in scored)


def test_encode_sentence_and_pair(tokenizer_path):
    sp = load_tokenizer(tokenizer_path)
    a, b = sp.encode("a warm , funny film .", out_type=int), sp.encode("flat .", out_type=int)
    ids, types = encode_sentence(sp, "a warm , funny film .", None, 64)
    assert ids == [CLS_ID, *a, SEP_ID] and types == [0] * (len(a) + 2)
    ids, types = encode_sentence(sp, "a warm , funny film .", "flat .", 64)
    assert ids == [CLS_ID, *a, SEP_ID, *b, SEP_ID]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    ids, types = encode_sentence(sp, "a warm , funny film .", "flat .", 8)
    assert len(ids) == 8 and ids.count(SEP_ID) == 2 and types[-1] == 1


def test_truncate_pair_longest_first():
    assert truncate_longest_first([1, 2, 3, 4, 5], [6, 7], 4) == ([1, 2], [6, 7])
    assert truncate_longest_first([1, 2], [3, 4, 5, 6], 4) == ([1, 2], [3, 4])
    assert truncate_longest_first([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])


def test_split_is_deterministic_disjoint_and_sized():
    a = split_indices(100, {"validation": 0.1, "test": 0.2}, seed=3)
    b = split_indices(100, {"validation": 0.1, "test": 0.2}, seed=3)
    c = split_indices(100, {"validation": 0.1, "test": 0.2}, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert [len(a[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))


def test_label_list():
    tagged = [TaggedExample(["a", "b"], ["B-x", "O"]), TaggedExample(["c"], ["I-x"])]
    assert label_list(tagged, None) == ["O", "B-x", "I-x"]
    sentences = [SentenceExample("a", "pos"), SentenceExample("b", "neg")]
    assert label_list(sentences, None) == ["neg", "pos"]
    assert label_list(sentences, ["pos", "neg"]) == ["pos", "neg"]


def test_collate_pads_sentences_and_tokens():
    batch = collate([Features([2, 7, 3], [0, 0, 0], 1), Features([2, 7, 8, 9, 3], [0, 0, 0, 1, 1], 0)], PAD_ID)
    assert batch["input_ids"].tolist() == [[2, 7, 3, PAD_ID, PAD_ID], [2, 7, 8, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]
    tokens = collate([Features([2, 7, 3], [0, 0, 0], [X, 4, X]), Features([2, 3], [0, 0], [X, X])], PAD_ID)
    assert tokens["labels"].tolist() == [[X, 4, X], [X, X, X]]
    assert all(t.dtype == torch.long for t in tokens.values())


def test_train_batches_shard_global_batches_across_ranks():
    features = [Features([2, i + 10, 3], [0, 0, 0], i) for i in range(10)]
    single = train_batches(features, micro_batch_size=4, seed=0, pad_id=PAD_ID)
    epoch = [next(single)["labels"].tolist() for _ in range(2)]  # 10 // 4 = 2 batches, tail dropped
    assert len({x for b in epoch for x in b}) == 8
    ranks = [train_batches(features, micro_batch_size=2, seed=0, pad_id=PAD_ID, rank=r, world_size=2) for r in (0, 1)]
    for step in range(2):  # together the ranks see exactly the single-process global batch
        r0, r1 = (next(it)["labels"].tolist() for it in ranks)
        assert len(r0) == len(r1) == 2
        assert sorted(r0 + r1) == sorted(epoch[step])
    with pytest.raises(DataError, match="cannot fill one batch"):
        next(train_batches(features[:3], micro_batch_size=4, seed=0, pad_id=PAD_ID))


def test_eval_batches_cover_everything_in_order():
    features = [Features([2, 3], [0, 0], i) for i in range(5)]
    assert [b["labels"].tolist() for b in eval_batches(features, 2, PAD_ID)] == [[0, 1], [2, 3], [4]]


def test_load_task_data_builtin_filters_labels_and_splits(tokenizer_path):
    sp = load_tokenizer(tokenizer_path)
    cfg = DatasetConfig(name="rotten_tomatoes", max_examples=400, validation_fraction=0.1, test_fraction=0.1)
    data = load_task_data(cfg, sp, max_seq_length=64, seed=0)
    assert data.labels == ["rotten", "fresh"]
    n = {k: len(v) for k, v in data.splits.items()}
    # ~8% of rows are 'plot' summaries, not reviews: skipped and counted
    assert data.counts["skipped_unknown_label"] == 400 - sum(n.values())
    assert 10 <= data.counts["skipped_unknown_label"] <= 60
    assert n["validation"] <= 40 and n["test"] <= 40 and n["train"] >= 280
    assert data.counts["skipped_rows"] == 14  # empty review texts in the shipped file
    assert all(len(f.input_ids) <= 64 and f.input_ids[0] == CLS_ID for f in data.splits["train"])
    again = load_task_data(cfg, sp, max_seq_length=64, seed=0)
    assert [f.input_ids for f in again.splits["test"]] == [f.input_ids for f in data.splits["test"]]


def test_load_task_data_user_conll_with_fixed_validation_file(tokenizer_path):
    sp = load_tokenizer(tokenizer_path)
    cfg = DatasetConfig(
        path=str(ASSETS / "ner.conll"),
        validation_path=str(ASSETS / "ner.conll"),
        validation_fraction=0.0,
        test_fraction=0.0,
    )
    data = load_task_data(cfg, sp, max_seq_length=32, seed=0)
    assert data.labels == ["O", "B-facility", "B-geo-loc", "B-person", "I-facility", "I-person"]
    assert len(data.splits["train"]) == 3 and len(data.splits["validation"]) == 3 and not data.splits["test"]
    assert len(data.skipped) == 2 and "tag 'BAD'" in data.skipped[0]
    words = Counter(label for f in data.splits["train"] for label in f.labels if label != X)
    assert sum(words.values()) == 5 + 3 + 4  # one scored position per word


def test_load_task_data_fail_policy_names_the_line(tokenizer_path):
    sp = load_tokenizer(tokenizer_path)
    cfg = DatasetConfig(path=str(ASSETS / "sentences.jsonl"), on_error="fail")
    with pytest.raises(DataError, match=r"sentences.jsonl:3: not valid JSON"):
        load_task_data(cfg, sp, max_seq_length=32, seed=0)


def test_dataset_config_validation():
    with pytest.raises(ValueError, match="exactly one of"):
        DatasetConfig(name="pang_lee", path="x.csv")
    with pytest.raises(ValueError, match="not one of"):
        DatasetConfig(name="imdb")
    with pytest.raises(ValueError, match="leave training data"):
        DatasetConfig(name="pang_lee", validation_fraction=0.5, test_fraction=0.5)
