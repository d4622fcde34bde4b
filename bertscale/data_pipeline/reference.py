"""One pair, one sequence, one document at a time: readable views of the vectorised builders.

The pipeline builds a whole range of documents in a handful of numpy calls
(:func:`~bertscale.data_pipeline.instances.range_samples`, :func:`bertscale.masking.mask_flat`).
The functions here call those same functions for a single document or sequence and return plain
objects, so the tests can state BERT's statistics on single pairs and masks, and check that the
range-at-once path gives exactly what one document at a time gives. The pipeline never calls them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bertscale.data_pipeline.instances import Corpus, SampleRecipe, pair_spans, range_samples, truncate_spans
from bertscale.data_pipeline.schema import Sample
from bertscale.masking import MaskingVocab, mask_flat


@dataclass
class Pair:
    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool


def create_pairs(
    corpus: Corpus, doc_id: int, pool: np.ndarray, max_seq_length: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> list[Pair]:  # fmt: skip
    """The truncated pairs of one document as token arrays (slices of ``corpus.tokens``, no copies)."""
    spans, is_random = pair_spans(corpus, doc_id, pool, max_seq_length, short_seq_prob, rng)
    spans = truncate_spans(spans, max_seq_length - 3, [(rng, len(spans))])
    t = corpus.tokens
    return [
        Pair(t[a0:a1], t[b0:b1], bool(r))
        for (a0, a1, b0, b1), r in zip(spans.tolist(), is_random, strict=True)
    ]


def truncate_random_ends(
    a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One pair through :func:`truncate_spans`: the longer side loses tokens, each from the front or
    the back at random (Google's truncate_seq_pair)."""
    ((a0, a1, b0, b1),) = truncate_spans(np.array([[0, len(a), 0, len(b)]]), max_num_tokens, [(rng, 1)])
    return a[a0:a1], b[b0:b1]


def mask_batch(
    sequences: list[np.ndarray], num_draws: int, masked_lm_prob: float, max_predictions: int,
    vocab: MaskingVocab, rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Static mask draws for each sequence, one generator → per sequence (positions, ids), each (D, M)."""
    lengths = np.array([len(x) for x in sequences], dtype=np.int64)
    positions, ids, m = mask_flat(
        np.concatenate(sequences), lengths, [(rng, len(sequences))], num_draws, masked_lm_prob,
        max_predictions, vocab, word_start,
    )  # fmt: skip
    bounds = np.concatenate([[0], np.cumsum(num_draws * m)])
    return [
        (positions[a:b].reshape(num_draws, -1), ids[a:b].reshape(num_draws, -1))
        for a, b in itertools.pairwise(bounds)
    ]


def mask_tokens(
    input_ids: np.ndarray, num_draws: int, masked_lm_prob: float, max_predictions: int, vocab: MaskingVocab,
    rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``num_draws`` independent draws for one sequence → (positions, ids), each (D, M), sorted per row."""
    return mask_batch([input_ids], num_draws, masked_lm_prob, max_predictions, vocab, rng, word_start)[0]


def document_samples(corpus: Corpus, doc_id: int, recipe: SampleRecipe) -> list[Sample]:
    """All samples of one document; its generator depends only on (seed, doc_id)."""
    return range_samples(corpus, doc_id, doc_id + 1, recipe).to_samples()
