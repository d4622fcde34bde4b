"""The one masking rule (bertscale.masking) with special ids that are not 0..4, and dynamic draws."""

from __future__ import annotations

import numpy as np

from bertscale.masking import IGNORE_INDEX, MaskingVocab, mask_flat, mask_sequence

# a published WordPiece vocabulary: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103
WORDPIECE = MaskingVocab(vocab_size=1000, mask_id=103, special_ids=(0, 100, 101, 102, 103))


def wordpiece_sequences(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """[CLS] A [SEP] B [SEP] with [UNK] sprinkled in: ids around the specials, on both sides of them."""
    sequences = []
    for length in rng.integers(20, 100, size=n):
        body = rng.integers(1, 1000, size=length - 3)
        body[np.isin(body, (101, 102, 103))] = 100  # [UNK] may occur in text; the others may not
        cut = int(rng.integers(1, length - 4))
        sequences.append(np.concatenate([[101], body[:cut], [102], body[cut:], [102]]))
    return sequences


def test_special_ids_are_never_chosen_nor_drawn() -> None:
    rng = np.random.default_rng(0)
    sequences = wordpiece_sequences(rng, 400)
    flat = np.concatenate(sequences)
    lengths = np.array([len(s) for s in sequences])
    groups = [(np.random.default_rng(i), 1) for i in range(len(sequences))]
    positions, ids, m = mask_flat(flat, lengths, groups, 8, 0.15, None, WORDPIECE)
    starts = np.repeat(np.cumsum(lengths) - lengths, 8 * m)
    original = flat[starts + positions]
    assert not np.isin(original, WORDPIECE.special_ids).any()
    candidates = [int((~np.isin(s, WORDPIECE.special_ids)).sum()) for s in sequences]
    np.testing.assert_array_equal(m, [max(1, round(0.15 * c)) for c in candidates])
    random = ids[(ids != 103) & (ids != original)]
    assert len(random) > 1000
    assert not np.isin(random, WORDPIECE.special_ids).any()
    below = np.mean(random < 100)  # 99 of the 995 replacement ids lie below [UNK]
    assert abs(below - 99 / 995) < 4 * np.sqrt(0.1 * 0.9 / len(random))


def test_dynamic_draw_labels_and_cap() -> None:
    rng = np.random.default_rng(1)
    (sequence,) = wordpiece_sequences(rng, 1)
    for cap, expected in ((None, round(0.15 * int((~WORDPIECE.is_special[sequence]).sum()))), (3, 3)):
        inputs, labels = mask_sequence(sequence, rng, WORDPIECE, 0.15, max_predictions=cap)
        chosen = np.flatnonzero(labels != IGNORE_INDEX)
        assert len(chosen) == expected
        np.testing.assert_array_equal(labels[chosen], sequence[chosen])
        unchosen = labels == IGNORE_INDEX
        np.testing.assert_array_equal(inputs[unchosen], sequence[unchosen])
        assert inputs.dtype == labels.dtype == np.int64


def test_a_draw_depends_only_on_its_generator() -> None:
    (sequence,) = wordpiece_sequences(np.random.default_rng(2), 1)
    a = mask_sequence(sequence, np.random.default_rng([5, 7]), WORDPIECE, 0.15)
    b = mask_sequence(sequence, np.random.default_rng([5, 7]), WORDPIECE, 0.15)
    c = mask_sequence(sequence, np.random.default_rng([5, 8]), WORDPIECE, 0.15)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_dynamic_whole_word_draw_cuts_at_most_one_word() -> None:
    rng = np.random.default_rng(3)
    word_start = np.arange(1000) % 4 == 0  # one id in four begins a word
    for sequence in wordpiece_sequences(rng, 200):
        _, labels = mask_sequence(sequence, rng, WORDPIECE, 0.15, word_start=word_start)
        candidates = np.flatnonzero(~WORDPIECE.is_special[sequence])
        assert (labels != IGNORE_INDEX).sum() == max(1, round(0.15 * len(candidates)))
        starts = word_start[sequence[candidates]] | (np.diff(candidates, prepend=-2) != 1)
        word_of = np.cumsum(starts)
        chosen = labels[candidates] != IGNORE_INDEX
        partial = [w for w in np.unique(word_of[chosen]) if not chosen[word_of == w].all()]
        assert len(partial) <= 1
