"""Pair creation and masking (pure functions): BERT's statistics on thousands of samples."""

from __future__ import annotations

import numpy as np
import pytest

from bertscale.data_pipeline.config import PairsConfig
from bertscale.data_pipeline.instances import Corpus, SampleRecipe, range_samples
from bertscale.data_pipeline.reference import (
    create_pairs,
    document_samples,
    mask_batch,
    mask_tokens,
    truncate_random_ends,
)
from bertscale.data_pipeline.schema import NEXT_IS_RANDOM
from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.masking import MaskingVocab

VOCAB = 30_000
SPECIAL = trained_special(VOCAB)  # a trained SentencePiece's ids: the five specials at 0-4
CLS_ID, SEP_ID, MASK_ID, NUM_SPECIAL_TOKENS = SPECIAL.cls_id, SPECIAL.sep_id, SPECIAL.mask_id, 5


def vocab(size: int = VOCAB) -> MaskingVocab:
    return trained_special(size).masking_vocab()


def recipe(corpus: Corpus, cfg: PairsConfig, seed: int, word_start: np.ndarray | None = None) -> SampleRecipe:
    return SampleRecipe(cfg, np.arange(corpus.num_documents), SPECIAL, seed, word_start)


def random_corpus(num_docs: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    docs = [
        [
            rng.integers(NUM_SPECIAL_TOKENS, VOCAB, size=rng.integers(3, 40))
            for _ in range(rng.integers(2, 30))
        ]
        for _ in range(num_docs)
    ]
    return Corpus.from_documents(docs)


def all_pairs(corpus: Corpus, max_seq_length: int = 128, short_seq_prob: float = 0.1, seed: int = 1):
    pool = np.arange(corpus.num_documents)
    rng = np.random.default_rng(seed)
    return [
        (doc_id, pair)
        for doc_id in range(corpus.num_documents)
        for pair in create_pairs(corpus, doc_id, pool, max_seq_length, short_seq_prob, rng)
    ]


def contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Is ``needle`` a contiguous run of ``haystack`` (int32 arrays)?"""
    hay, pin = haystack.astype(np.int32).tobytes(), needle.astype(np.int32).tobytes()
    start = hay.find(pin)
    while start != -1:
        if start % 4 == 0:
            return True
        start = hay.find(pin, start + 1)
    return False


def test_next_sentence_is_random_half_the_time() -> None:
    pairs = all_pairs(random_corpus(600), max_seq_length=64)
    labels = np.array([p.is_random_next for _, p in pairs])
    n = len(labels)
    assert n >= 3000
    assert abs(labels.mean() - 0.5) < 4 * np.sqrt(0.25 / n), f"random share {labels.mean():.3f} over {n}"


def test_real_b_follows_a_and_random_b_comes_from_another_document() -> None:
    corpus = random_corpus(60, seed=3)
    streams = [np.concatenate(corpus.document(d)) for d in range(corpus.num_documents)]
    pairs = all_pairs(corpus, max_seq_length=10_000)  # no truncation, so spans stay whole
    assert {p.is_random_next for _, p in pairs} == {False, True}
    for doc_id, pair in pairs:
        assert len(pair.tokens_a) >= 1 and len(pair.tokens_b) >= 1
        assert contains(streams[doc_id], pair.tokens_a)
        if pair.is_random_next:
            assert not contains(streams[doc_id], pair.tokens_b)
            assert any(contains(s, pair.tokens_b) for d, s in enumerate(streams) if d != doc_id)
        else:
            assert contains(streams[doc_id], np.concatenate([pair.tokens_a, pair.tokens_b]))


@pytest.mark.parametrize("max_seq_length", [16, 64, 128, 512])
def test_pairs_fit_max_seq_length(max_seq_length: int) -> None:
    pairs = all_pairs(random_corpus(50, seed=4), max_seq_length=max_seq_length)
    lengths = np.array([len(p.tokens_a) + len(p.tokens_b) + 3 for _, p in pairs])
    assert lengths.max() <= max_seq_length
    assert min(min(len(p.tokens_a), len(p.tokens_b)) for _, p in pairs) >= 1
    if max_seq_length <= 128:  # without short sequences, long documents fill most to the brim
        full = all_pairs(random_corpus(200, seed=4), max_seq_length=max_seq_length, short_seq_prob=0.0)
        assert np.mean([len(p.tokens_a) + len(p.tokens_b) + 3 == max_seq_length for _, p in full]) > 0.5


def test_short_seq_prob_makes_shorter_sequences() -> None:
    corpus = random_corpus(80, seed=5)
    never = np.mean([len(p.tokens_a) + len(p.tokens_b) for _, p in all_pairs(corpus, 128, 0.0)])
    always = np.mean([len(p.tokens_a) + len(p.tokens_b) for _, p in all_pairs(corpus, 128, 1.0)])
    assert always < 0.8 * never


def test_truncate_random_ends_trims_the_longer_side_to_fit() -> None:
    rng = np.random.default_rng(0)
    a, b = np.arange(100), np.arange(100, 130)
    for _ in range(200):
        ta, tb = truncate_random_ends(a, b, 50, rng)
        assert len(ta) + len(tb) == 50
        assert len(tb) == 25 and len(ta) == 25  # the longer side is cut until they are level
        assert contains(a, ta) and contains(b, tb)


def test_masking_80_10_10_and_15_percent() -> None:
    rng = np.random.default_rng(11)
    draws, length, max_predictions = 4, 128, 40
    chosen_total, mask, rand, same = 0, 0, 0, 0
    replaced_ids = []
    for _ in range(1500):
        body = rng.integers(NUM_SPECIAL_TOKENS, VOCAB, size=length - 3)
        cut = rng.integers(1, length - 4)
        input_ids = np.concatenate([[CLS_ID], body[:cut], [SEP_ID], body[cut:], [SEP_ID]])
        positions, ids = mask_tokens(input_ids, draws, 0.15, max_predictions, vocab(), rng)
        assert positions.shape == ids.shape == (draws, round(0.15 * (length - 3)))
        for row_pos, row_ids in zip(positions, ids, strict=True):
            assert np.all(np.diff(row_pos) > 0)  # sorted, no repeats
            assert np.all(input_ids[row_pos] >= NUM_SPECIAL_TOKENS)  # never [CLS]/[SEP]
            original = input_ids[row_pos]
            is_mask = row_ids == MASK_ID
            is_same = row_ids == original
            mask += is_mask.sum()
            same += is_same.sum()
            rand += (~is_mask & ~is_same).sum()
            replaced_ids.append(row_ids[~is_mask & ~is_same])
        chosen_total += positions.size
    assert chosen_total > 100_000
    tol = 4 * np.sqrt(0.09 / chosen_total)  # 4 sigma of a 0.1 share
    assert abs(mask / chosen_total - 0.8) < 4 * np.sqrt(0.16 / chosen_total)
    assert abs(rand / chosen_total - 0.1) < tol
    assert abs(same / chosen_total - 0.1) < tol
    replaced = np.concatenate(replaced_ids)
    assert replaced.min() >= NUM_SPECIAL_TOKENS and replaced.max() < VOCAB
    assert abs(replaced.mean() - (NUM_SPECIAL_TOKENS + VOCAB - 1) / 2) < 0.02 * VOCAB  # uniform


def test_every_position_equally_likely_to_be_masked() -> None:
    rng = np.random.default_rng(2)
    input_ids = np.concatenate([[CLS_ID], rng.integers(NUM_SPECIAL_TOKENS, VOCAB, 40), [SEP_ID]])
    input_ids = np.concatenate([input_ids, rng.integers(NUM_SPECIAL_TOKENS, VOCAB, 20), [SEP_ID]])
    positions, _ = mask_tokens(input_ids, 20_000, 0.15, 100, vocab(), rng)
    counts = np.bincount(positions.ravel(), minlength=len(input_ids))
    specials = np.isin(input_ids, [CLS_ID, SEP_ID])
    assert counts[specials].sum() == 0
    share = counts[~specials] / positions.shape[0]
    assert positions.shape[1] == 9  # round(0.15 * 60)
    np.testing.assert_allclose(share, 9 / 60, atol=0.015)


def test_max_predictions_caps_the_count() -> None:
    rng = np.random.default_rng(0)
    input_ids = np.concatenate(
        [[CLS_ID], rng.integers(5, 100, 300), [SEP_ID], rng.integers(5, 100, 200), [SEP_ID]]
    )
    positions, _ = mask_tokens(input_ids, 3, 0.15, 20, vocab(100), rng)
    assert positions.shape == (3, 20)


def test_whole_word_masking_masks_whole_words() -> None:
    rng = np.random.default_rng(8)
    size = 1000
    word_start = np.zeros(size, dtype=bool)
    word_start[: size // 2] = True  # ids < 500 start a word, ids >= 500 continue one
    partial_words = 0
    for _ in range(500):
        body = rng.integers(NUM_SPECIAL_TOKENS, size, size=100)
        input_ids = np.concatenate([[CLS_ID], body[:50], [SEP_ID], body[50:], [SEP_ID]])
        positions, _ = mask_tokens(input_ids, 2, 0.15, 20, vocab(size), rng, word_start)
        assert positions.shape == (2, 15)
        # word id of every position: a new word starts at a word-start piece or after a special token
        starts = word_start[input_ids] | np.isin(np.roll(input_ids, 1), [CLS_ID, SEP_ID])
        word_of = np.cumsum(starts)
        for row in positions:
            chosen = set(row.tolist())
            incomplete = 0
            for w in set(word_of[row].tolist()):
                members = {i for i in np.flatnonzero(word_of == w) if input_ids[i] >= NUM_SPECIAL_TOKENS}
                incomplete += not members <= chosen
            assert incomplete <= 1  # at most the one word cut to meet the exact count
            partial_words += incomplete
    assert partial_words < 0.5 * 1000  # and that is the exception, not the rule


def test_document_samples_depend_only_on_seed_and_document() -> None:
    corpus = random_corpus(30, seed=9)
    cfg = PairsConfig(max_seq_length=64, dupe_factor=3)
    first = document_samples(corpus, 7, recipe(corpus, cfg, seed=1))
    again = document_samples(corpus, 7, recipe(corpus, cfg, seed=1))
    other_seed = document_samples(corpus, 7, recipe(corpus, cfg, seed=2))
    assert len(first) == len(again) > 0
    for s, t in zip(first, again, strict=True):
        assert s.key == t.key
        np.testing.assert_array_equal(s.input_ids, t.input_ids)
        np.testing.assert_array_equal(s.masked_positions, t.masked_positions)
        np.testing.assert_array_equal(s.masked_ids, t.masked_ids)
    assert any(
        len(s.input_ids) != len(t.input_ids) or not np.array_equal(s.input_ids, t.input_ids)
        for s, t in zip(first, other_seed, strict=False)
    )
    for s in first:
        s.validate()
        assert s.masked_positions.shape[0] == 3
        assert s.input_ids[0] == CLS_ID and s.input_ids[-1] == SEP_ID
        first_sep = int(np.flatnonzero(s.input_ids == SEP_ID)[0])
        assert np.all(s.token_type_ids[: first_sep + 1] == 0) and np.all(
            s.token_type_ids[first_sep + 1 :] == 1
        )
        assert s.next_sentence_label in (0, NEXT_IS_RANDOM)


@pytest.mark.parametrize("whole_words", [False, True])
def test_mask_batch_treats_each_sequence_on_its_own(whole_words: bool) -> None:
    rng = np.random.default_rng(5)
    word_start = (np.arange(VOCAB) % 3 != 0) if whole_words else None
    sequences = []
    for length in rng.integers(6, 120, size=40):
        cut = int(rng.integers(1, length - 4))
        body = rng.integers(NUM_SPECIAL_TOKENS, VOCAB, size=length - 3)
        sequences.append(np.concatenate([[CLS_ID], body[:cut], [SEP_ID], body[cut:], [SEP_ID]]))
    masks = mask_batch(sequences, 3, 0.15, 12, vocab(), rng, word_start)
    assert len(masks) == len(sequences)
    for seq, (positions, ids) in zip(sequences, masks, strict=True):
        expected = min(12, max(1, round(0.15 * (len(seq) - 3))))
        assert positions.shape == ids.shape == (3, expected)
        assert positions.min() >= 1 and positions.max() < len(seq) - 1
        assert np.all(seq[positions] >= NUM_SPECIAL_TOKENS)
        assert all(len(set(row.tolist())) == expected for row in positions)
        kept = ids != MASK_ID
        assert np.all((ids[kept] >= NUM_SPECIAL_TOKENS) & (ids[kept] < VOCAB))


@pytest.mark.parametrize("whole_words", [False, True])
def test_a_range_builds_exactly_its_documents_one_by_one(whole_words: bool) -> None:
    """Vectorising over a range of documents changes no draw: each document keeps its own generator."""
    corpus = random_corpus(25, seed=4)
    cfg = PairsConfig(max_seq_length=48, dupe_factor=4, whole_word_masking=whole_words)
    build = recipe(corpus, cfg, 7, word_start=np.arange(VOCAB) % 3 != 0)
    together = range_samples(corpus, 3, 25, build).to_samples()
    one_by_one = [s for d in range(3, 25) for s in document_samples(corpus, d, build)]
    assert len(together) == len(one_by_one) > 100
    for s, t in zip(together, one_by_one, strict=True):
        assert s.key == t.key and s.next_sentence_label == t.next_sentence_label
        for name in ("input_ids", "token_type_ids", "masked_positions", "masked_ids"):
            np.testing.assert_array_equal(getattr(s, name), getattr(t, name))
