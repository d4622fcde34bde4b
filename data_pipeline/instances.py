"""Pure functions: NSP pairs, truncation and MLM masking, after Google's create_pretraining_data.py.

Every function takes an explicit ``numpy.random.Generator``. The pipeline seeds one per document
from ``(seed, doc_id)``, so a document's samples never depend on which worker built them.

Two deliberate departures from the reference, both to keep the statistics the paper states:
- The coin for "B is random" is tossed for every pair (p = 0.5). When the chunk holds a single
  sentence and the coin says "real", that sentence is cut at a random token into A and B (the
  reference forces such pairs to be random, which pushes the random share above one half).
- Masked token counts are taken over non-special tokens, and random replacements are drawn from
  the non-special vocabulary.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from data_pipeline.config import PairsConfig
from data_pipeline.schema import (
    CLS_ID,
    MASK_ID,
    NEXT_IS_RANDOM,
    NEXT_IS_REAL,
    NUM_SPECIAL_TOKENS,
    SEP_ID,
    Sample,
)


@dataclass
class Corpus:
    """All tokenized sentences as flat arrays (cheap to share between Ray workers, zero-copy)."""

    tokens: np.ndarray  # (N,) int32, every sentence back to back
    sentence_offsets: np.ndarray  # (S + 1,) int64 into tokens
    document_offsets: np.ndarray  # (D + 1,) int64 into sentences

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    def document(self, doc_id: int) -> list[np.ndarray]:
        first, last = self.document_offsets[doc_id], self.document_offsets[doc_id + 1]
        offsets = self.sentence_offsets[first : last + 1]
        return [self.tokens[a:b] for a, b in itertools.pairwise(offsets)]

    @classmethod
    def from_documents(cls, documents: list[list[np.ndarray]]) -> Corpus:
        sentences = [s for doc in documents for s in doc]
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        tokens = np.concatenate(sentences).astype(np.int32) if sentences else np.zeros(0, np.int32)
        return cls(
            tokens=tokens,
            sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            document_offsets=np.concatenate([[0], np.cumsum([len(d) for d in documents])]).astype(np.int64),
        )


@dataclass
class Pair:
    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool


def truncate_pair(a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng: np.random.Generator):
    """Trim the longer side, from its front or back at random, until both fit."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a[a_lo:a_hi], b[b_lo:b_hi]


def _random_document(corpus: Corpus, pool: np.ndarray, doc_id: int, rng: np.random.Generator) -> int | None:
    for _ in range(10):
        other = int(pool[rng.integers(len(pool))])
        if other != doc_id:
            return other
    return None  # the pool holds only this document


def create_pairs(
    corpus: Corpus, doc_id: int, pool: np.ndarray, max_seq_length: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> list[Pair]:  # fmt: skip
    """Sentence pairs from one document (A: consecutive sentences; B: the rest or another document)."""
    document = corpus.document(doc_id)
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_length = int(rng.integers(2, max_num_tokens + 1))

    pairs: list[Pair] = []
    chunk: list[np.ndarray] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_length:
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            tokens_a = np.concatenate(chunk[:a_end])
            other = _random_document(corpus, pool, doc_id, rng) if rng.random() < 0.5 else None
            if other is not None:
                target_b_length = max(1, target_length - len(tokens_a))
                random_doc = corpus.document(other)
                start = int(rng.integers(len(random_doc)))
                # sentences from a random start until B reaches its target length
                reach = np.cumsum([len(s) for s in random_doc[start:]])
                count = int(np.searchsorted(reach, target_b_length)) + 1
                tokens_b = np.concatenate(random_doc[start : start + count])
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            elif len(chunk) >= 2:
                tokens_b = np.concatenate(chunk[a_end:])
            elif len(tokens_a) >= 2:  # one sentence: A and B are its two halves, cut at random
                cut = int(rng.integers(1, len(tokens_a)))
                tokens_a, tokens_b = tokens_a[:cut], tokens_a[cut:]
            else:  # a one-token document: no pair possible
                chunk, chunk_length = [], 0
                i += 1
                continue
            tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
            pairs.append(Pair(tokens_a, tokens_b, other is not None))
            chunk, chunk_length = [], 0
        i += 1
    return pairs


def _word_groups(candidates: np.ndarray, input_ids: np.ndarray, word_start: np.ndarray) -> list[np.ndarray]:
    """Split candidate positions into whole words: a word begins at a "▁" piece or after a gap."""
    starts = word_start[input_ids[candidates]]
    starts[1:] |= np.diff(candidates) != 1
    starts[0] = True
    return np.split(candidates, np.flatnonzero(starts)[1:])


def _choose_positions(
    candidates: np.ndarray, num_to_predict: int, rng: np.random.Generator, words: list[np.ndarray] | None
) -> np.ndarray:
    if words is None:
        return rng.choice(candidates, size=num_to_predict, replace=False)
    # Whole words in random order while they fit; if the budget is not met exactly, the first word
    # that did not fit is masked in part so every draw has the same count (the shard's (D, M)).
    chosen: list[np.ndarray] = []
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


def mask_tokens(
    input_ids: np.ndarray, num_draws: int, masked_lm_prob: float, max_predictions: int, vocab_size: int,
    rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``num_draws`` independent MLM draws → (positions, ids), each (D, M), positions sorted per row.

    15% of the non-special tokens are chosen; of those 80% become [MASK], 10% a random
    non-special token and 10% stay. ``word_start`` (bool per vocabulary id) turns on whole-word masking.
    """
    candidates = np.flatnonzero(input_ids >= NUM_SPECIAL_TOKENS)
    num_to_predict = min(max_predictions, max(1, round(len(candidates) * masked_lm_prob)), len(candidates))
    words = _word_groups(candidates, input_ids, word_start) if word_start is not None else None
    positions = np.empty((num_draws, num_to_predict), dtype=np.int64)
    ids = np.empty((num_draws, num_to_predict), dtype=np.int64)
    for d in range(num_draws):
        chosen = np.sort(_choose_positions(candidates, num_to_predict, rng, words))
        roll = rng.random(num_to_predict)
        random_ids = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=num_to_predict)
        original = input_ids[chosen]
        positions[d] = chosen
        ids[d] = np.where(roll < 0.8, MASK_ID, np.where(roll < 0.9, random_ids, original))
    return positions, ids


def pair_to_sample(
    key: str, pair: Pair, cfg: PairsConfig, vocab_size: int, rng: np.random.Generator,
    word_start: np.ndarray | None = None,
) -> Sample:  # fmt: skip
    a, b = pair.tokens_a, pair.tokens_b
    input_ids = np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]]).astype(np.int32)
    token_type_ids = np.zeros(len(input_ids), dtype=np.uint8)
    token_type_ids[len(a) + 2 :] = 1
    positions, ids = mask_tokens(
        input_ids, cfg.dupe_factor, cfg.masked_lm_prob, cfg.max_predictions_per_seq, vocab_size, rng,
        word_start if cfg.whole_word_masking else None,
    )  # fmt: skip
    return Sample(
        key=key,
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        masked_positions=positions.astype(np.int16),
        masked_ids=ids.astype(np.int32),
        next_sentence_label=NEXT_IS_RANDOM if pair.is_random_next else NEXT_IS_REAL,
    )


def document_samples(
    corpus: Corpus, doc_id: int, pool: np.ndarray, cfg: PairsConfig, vocab_size: int, seed: int,
    word_start: np.ndarray | None = None,
) -> list[Sample]:  # fmt: skip
    """All samples of one document; the generator depends only on (seed, doc_id)."""
    rng = np.random.default_rng([seed, doc_id])
    pairs = create_pairs(corpus, doc_id, pool, cfg.max_seq_length, cfg.short_seq_prob, rng)
    return [
        pair_to_sample(f"d{doc_id:09d}p{j:05d}", pair, cfg, vocab_size, rng, word_start)
        for j, pair in enumerate(pairs)
    ]
