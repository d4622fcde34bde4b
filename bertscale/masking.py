"""The BERT masking rule: one owner for the pipeline's static draws and pretraining's dynamic ones.

Of a sequence's non-special tokens, ``round(masked_lm_prob * n)`` are chosen (at least 1, at most
``max_predictions_per_seq`` when a cap is given, never more than ``n``), optionally whole words at a
time; of the chosen, 80% become [MASK], 10% a random non-special id, 10% stay as they are (Google's
create_pretraining_data.py, vectorised). Randomness comes only from explicit numpy generators, so
tests pin exact outputs. numpy only: Ray workers and DataLoader workers import it cheaply.

Special ids and the vocabulary bound are parameters (:class:`MaskingVocab`), never constants: a
published WordPiece vocabulary has [MASK] = 103, not 4.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100  # label of positions that are not scored (HuggingFace / torch cross-entropy)

Groups = list[tuple[np.random.Generator, int]]  # consecutive runs of sequences, the generator of each


@dataclass(frozen=True)
class MaskingVocab:
    """The ids masking needs: the vocabulary bound, [MASK], and the ids never chosen nor drawn."""

    vocab_size: int
    mask_id: int
    special_ids: tuple[int, ...]

    @functools.cached_property
    def is_special(self) -> np.ndarray:
        """(vocab_size,) bool lookup table."""
        table = np.zeros(self.vocab_size, bool)
        table[list(self.special_ids)] = True
        return table

    @functools.cached_property
    def replacement_ids(self) -> np.ndarray:
        """Ids a random replacement is drawn from, uniformly: every non-special id, ascending."""
        return np.flatnonzero(~self.is_special)


def num_predictions(counts: np.ndarray, masked_lm_prob: float, max_predictions: int | None) -> np.ndarray:
    """Positions to mask per sequence, given its count of candidate (non-special) tokens."""
    return np.minimum(np.clip(np.round(counts * masked_lm_prob), 1, max_predictions), counts).astype(np.int64)


def _floyd_subsets(u: np.ndarray, counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Uniform random ``sizes[r]``-subsets of ``range(counts[r])`` for every row at once, as a
    (R, max count) bool table (Floyd's algorithm: one numpy step per element, rows in parallel).

    ``u``: (sum sizes,) uniforms, row after row; step j of row r uses the row's j-th.
    """
    width = int(counts.max(initial=0))
    taken = np.zeros(len(counts) * width, bool)  # flat (R, width): cheaper to index than 2-D
    row_start = np.cumsum(sizes) - sizes
    for j in range(int(sizes.max(initial=0))):
        rows = np.flatnonzero(j < sizes)
        # draw from 0..upper; on a repeat take upper (new by construction)
        upper = counts[rows] - sizes[rows] + j
        pick = rows * width + (u[row_start[rows] + j] * (upper + 1)).astype(np.int64)
        taken[np.where(taken[pick], rows * width + upper, pick)] = True
    return taken.reshape(len(counts), width)


def _word_groups(candidates: np.ndarray, input_ids: np.ndarray, word_start: np.ndarray) -> list[np.ndarray]:
    """Split candidate positions into whole words: a word begins at a "▁" piece or after a gap."""
    starts = word_start[input_ids[candidates]]
    starts[1:] |= np.diff(candidates) != 1
    starts[0] = True
    return np.split(candidates, np.flatnonzero(starts)[1:])


def _choose_whole_words(num_to_predict: int, rng: np.random.Generator, words: list[np.ndarray]) -> np.ndarray:
    """Whole words in random order while they fit; if the count is not met exactly, the first word
    that did not fit is masked in part, so every draw has the same count (the shard's (D, M))."""
    chosen: list[np.ndarray] = [np.zeros(0, np.int64)]
    left = num_to_predict
    spill: np.ndarray | None = None
    for w in rng.permutation(len(words)):
        word = words[w]
        if len(word) <= left:
            chosen.append(word)
            left -= len(word)
            if left == 0:
                break
        elif spill is None:
            spill = word
    if left:
        assert spill is not None
        chosen.append(spill[:left])
    return np.concatenate(chosen)


def mask_flat(
    flat: np.ndarray, lengths: np.ndarray, groups: Groups, num_draws: int, masked_lm_prob: float,
    max_predictions: int | None, vocab: MaskingVocab, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``num_draws`` mask draws for each of the sequences lying back to back in ``flat``, all at once.

    ``groups``: consecutive runs of sequences and the generator each run draws from (one per
    document in the pipeline, so the draws never depend on how documents are batched).
    ``word_start`` (bool per vocabulary id) turns on whole-word masking.
    Returns (positions int64, ids int32, M per sequence); each sequence's (D, M) block row-major,
    positions within the sequence, sorted per row; ``ids`` is what goes at each position.
    """
    n = len(lengths)
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    candidates = np.flatnonzero(~vocab.is_special[flat])  # (K,) flat positions, sequence by sequence
    counts = np.bincount(np.repeat(np.arange(n), lengths)[candidates], minlength=n)
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    num_to_predict = num_predictions(counts, masked_lm_prob, max_predictions)
    # 3 uniforms per prediction (which position, [MASK]/random/same, which random id), in output
    # order: sequence, draw, slot; each group draws its own
    group_bounds = np.concatenate([[0], np.cumsum([g for _, g in groups])]).astype(np.int64)
    per_group = np.concatenate([[0], np.cumsum(num_to_predict)])[group_bounds] * num_draws
    u = np.concatenate(
        [np.zeros((3, 0))]
        + [
            rng.random((3, int(b - a)))
            for (rng, _), a, b in zip(groups, per_group[:-1], per_group[1:], strict=True)
        ],
        axis=1,
    )
    seq = np.repeat(np.arange(n), num_draws * num_to_predict)
    if word_start is None:
        # each (sequence, draw) row: the chosen candidate ranks, ascending (the table's row-major order)
        taken = _floyd_subsets(u[0], np.repeat(counts, num_draws), np.repeat(num_to_predict, num_draws))
        rank = np.flatnonzero(taken) % taken.shape[1]
        positions = candidates[group_start[seq] + rank] - seq_start[seq]
    else:
        width = int(num_to_predict.max(initial=0))
        chosen = np.zeros((n, num_draws, width), np.int64)
        for (rng, _), s0, s1 in zip(groups, group_bounds[:-1], group_bounds[1:], strict=True):
            for i in range(s0, s1):
                seq_ids = flat[seq_start[i] : seq_start[i] + lengths[i]]
                words = _word_groups(np.flatnonzero(~vocab.is_special[seq_ids]), seq_ids, word_start)
                for d in range(num_draws):
                    chosen[i, d, : num_to_predict[i]] = np.sort(
                        _choose_whole_words(num_to_predict[i], rng, words)
                    )
        positions = chosen[(np.arange(width) < num_to_predict[:, None, None]).repeat(num_draws, axis=1)]
    ids = replacement(u[1], u[2], flat[seq_start[seq] + positions], vocab)
    return positions, ids, num_to_predict


def replacement(roll: np.ndarray, pick: np.ndarray, original: np.ndarray, vocab: MaskingVocab) -> np.ndarray:
    """80/10/10 from two uniforms per chosen position → the id placed there (int32)."""
    choices = vocab.replacement_ids
    random_ids = choices[(pick * len(choices)).astype(np.int64)]
    return np.where(roll < 0.8, vocab.mask_id, np.where(roll < 0.9, random_ids, original)).astype(np.int32)


def apply_mask(
    input_ids: np.ndarray, positions: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One draw applied to one sequence → (model input_ids, MLM labels), int64; labels are the
    original ids at ``positions`` and :data:`IGNORE_INDEX` elsewhere."""
    positions = positions.astype(np.int64)
    inputs = input_ids.astype(np.int64)
    labels = np.full_like(inputs, IGNORE_INDEX)
    labels[positions] = inputs[positions]
    inputs[positions] = ids
    return inputs, labels


def mask_sequence(
    input_ids: np.ndarray, rng: np.random.Generator, vocab: MaskingVocab, masked_lm_prob: float,
    max_predictions: int | None = None, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One fresh draw for one sequence (dynamic masking) → (model input_ids, labels).

    The rule of :func:`mask_flat` (same candidates, count and 80/10/10), drawn per sequence: for a
    single row numpy's own subset draw is several times cheaper than the vectorised Floyd steps.
    """
    candidates = np.flatnonzero(~vocab.is_special[input_ids])
    count = int(num_predictions(np.array([len(candidates)]), masked_lm_prob, max_predictions)[0])
    if word_start is not None and count:
        chosen = _choose_whole_words(count, rng, _word_groups(candidates, input_ids, word_start))
    else:
        chosen = rng.choice(candidates, size=count, replace=False)
    positions = np.sort(chosen)
    roll, pick = rng.random((2, count))
    return apply_mask(input_ids, positions, replacement(roll, pick, input_ids[positions], vocab))
