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
    def from_encoded(cls, tokens: np.ndarray, lengths: np.ndarray, sentences_per_doc: np.ndarray) -> Corpus:
        """From flat ids, sentence lengths and sentences per document (documents without any dropped)."""
        sentences_per_doc = sentences_per_doc[sentences_per_doc > 0]
        return cls(
            tokens=tokens,
            sentence_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            document_offsets=np.concatenate([[0], np.cumsum(sentences_per_doc)]).astype(np.int64),
        )

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
    """Trim the longer side (B on ties), one token at a time from its front or back at random.

    Same distribution as the reference's token-by-token loop, in closed form: how many tokens
    each side loses is fixed by the leveling rule, and how many of those come off the front is
    Binomial(n, 1/2).
    """
    excess = len(a) + len(b) - max_num_tokens
    if excess <= 0:
        return a, b
    first = min(excess, abs(len(a) - len(b)))  # the longer side alone, until level
    cut_a, cut_b = (first, 0) if len(a) > len(b) else (0, first)
    rest = excess - first  # then alternately, B first
    cut_a, cut_b = cut_a + rest // 2, cut_b + (rest + 1) // 2
    front_a, front_b = rng.binomial(cut_a, 0.5), rng.binomial(cut_b, 0.5)
    return a[front_a : len(a) - (cut_a - front_a)], b[front_b : len(b) - (cut_b - front_b)]


def _random_document(pool: np.ndarray, doc_id: int, rng: np.random.Generator) -> int | None:
    for _ in range(10):
        other = int(pool[rng.integers(len(pool))])
        if other != doc_id:
            return other
    return None  # the pool holds only this document


def create_pairs(
    corpus: Corpus, doc_id: int, pool: np.ndarray, max_seq_length: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> list[Pair]:  # fmt: skip
    """Sentence pairs from one document (A: consecutive sentences; B: the rest or another document).

    Sentences lie back to back in ``corpus.tokens``, so A and B are slices of it (no copies);
    ``s`` indexes sentences, ``off[s]`` is where sentence ``s`` starts.
    """
    tokens, off, docs = corpus.tokens, corpus.sentence_offsets, corpus.document_offsets
    first, last = int(docs[doc_id]), int(docs[doc_id + 1])
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_length = int(rng.integers(2, max_num_tokens + 1))

    pairs: list[Pair] = []
    chunk_start = s = first
    while s < last:
        if s == last - 1 or off[s + 1] - off[chunk_start] >= target_length:
            num_sentences = s + 1 - chunk_start
            a_end = chunk_start + (int(rng.integers(1, num_sentences)) if num_sentences >= 2 else 1)
            tokens_a = tokens[off[chunk_start] : off[a_end]]
            other = _random_document(pool, doc_id, rng) if rng.random() < 0.5 else None
            if other is not None:
                # sentences from a random start in the other document until B reaches its target
                target_b_length = max(1, target_length - len(tokens_a))
                other_last = int(docs[other + 1])
                start = int(rng.integers(docs[other], other_last))
                reach = int(np.searchsorted(off[start + 1 : other_last + 1], off[start] + target_b_length))
                tokens_b = tokens[off[start] : off[min(start + 1 + reach, other_last)]]
                s = a_end - 1  # the unused sentences start the next chunk
            elif num_sentences >= 2:
                tokens_b = tokens[off[a_end] : off[s + 1]]
            elif len(tokens_a) >= 2:  # one sentence: A and B are its two halves, cut at random
                cut = int(rng.integers(1, len(tokens_a)))
                tokens_a, tokens_b = tokens_a[:cut], tokens_a[cut:]
            else:  # a one-token sentence alone: no pair possible
                chunk_start = s = s + 1
                continue
            tokens_a, tokens_b = truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
            pairs.append(Pair(tokens_a, tokens_b, other is not None))
            chunk_start = s + 1
        s += 1
    return pairs


def _word_groups(candidates: np.ndarray, input_ids: np.ndarray, word_start: np.ndarray) -> list[np.ndarray]:
    """Split candidate positions into whole words: a word begins at a "▁" piece or after a gap."""
    starts = word_start[input_ids[candidates]]
    starts[1:] |= np.diff(candidates) != 1
    starts[0] = True
    return np.split(candidates, np.flatnonzero(starts)[1:])


def _choose_positions(num_to_predict: int, rng: np.random.Generator, words: list[np.ndarray]) -> np.ndarray:
    """Whole words in random order while they fit; if the count is not met exactly, the first word
    that did not fit is masked in part, so every draw has the same count (the shard's (D, M))."""
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
    return mask_batch([input_ids], num_draws, masked_lm_prob, max_predictions, vocab_size, rng, word_start)[0]


def mask_batch(
    sequences: list[np.ndarray], num_draws: int, masked_lm_prob: float, max_predictions: int,
    vocab_size: int, rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """:func:`mask_tokens` for many sequences at once (a handful of numpy calls in all, not per sequence)."""
    lengths = np.array([len(x) for x in sequences])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.concatenate(sequences)
    candidates = np.flatnonzero(flat >= NUM_SPECIAL_TOKENS)  # (K,) flat positions, sequence by sequence
    owner = np.searchsorted(starts, candidates, side="right") - 1  # (K,) sequence of each candidate
    counts = np.bincount(owner, minlength=len(sequences))
    num_to_predict = np.minimum(np.clip(np.round(counts * masked_lm_prob), 1, max_predictions), counts)
    num_to_predict = num_to_predict.astype(np.int64)
    if word_start is None:
        # Per sequence, the M smallest of uniform keys are a uniform M-subset. Sorting by
        # owner + key (key < 1) groups candidates by sequence, so one argsort serves them all.
        order = np.argsort(owner + rng.random((num_draws, len(candidates))), axis=1)  # (D, K)
        rank = np.arange(len(candidates)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[owner]
        chosen = np.sort(order[:, rank < num_to_predict[owner]], axis=1)  # (D, sum M), grouped
        positions = candidates[chosen]
    else:
        rows = []
        for i, seq in enumerate(sequences):
            words = _word_groups(np.flatnonzero(seq >= NUM_SPECIAL_TOKENS), seq, word_start)
            rows.append([np.sort(_choose_positions(num_to_predict[i], rng, words)) for _ in range(num_draws)])
        positions = np.concatenate(
            [np.stack(r) + start for r, start in zip(rows, starts, strict=True)], axis=1
        )
    roll = rng.random(positions.shape)
    random_ids = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=positions.shape)
    ids = np.where(roll < 0.8, MASK_ID, np.where(roll < 0.9, random_ids, flat[positions]))
    bounds = np.concatenate([[0], np.cumsum(num_to_predict)])
    return [
        (positions[:, a:b] - start, ids[:, a:b])
        for a, b, start in zip(bounds[:-1], bounds[1:], starts, strict=True)
    ]


def pair_inputs(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] A [SEP] B [SEP]`` → (input_ids int32, token_type_ids uint8)."""
    a, b = pair.tokens_a, pair.tokens_b
    input_ids = np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]]).astype(np.int32)
    token_type_ids = np.zeros(len(input_ids), dtype=np.uint8)
    token_type_ids[len(a) + 2 :] = 1
    return input_ids, token_type_ids


def document_samples(
    corpus: Corpus, doc_id: int, pool: np.ndarray, cfg: PairsConfig, vocab_size: int, seed: int,
    word_start: np.ndarray | None = None,
) -> list[Sample]:  # fmt: skip
    """All samples of one document; the generator depends only on (seed, doc_id)."""
    rng = np.random.default_rng([seed, doc_id])
    pairs = create_pairs(corpus, doc_id, pool, cfg.max_seq_length, cfg.short_seq_prob, rng)
    if not pairs:
        return []
    inputs = [pair_inputs(pair) for pair in pairs]
    masks = mask_batch(
        [input_ids for input_ids, _ in inputs], cfg.dupe_factor, cfg.masked_lm_prob,
        cfg.max_predictions_per_seq, vocab_size, rng, word_start if cfg.whole_word_masking else None,
    )  # fmt: skip
    return [
        Sample(
            key=f"d{doc_id:09d}p{j:05d}",
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            masked_positions=positions.astype(np.int16),
            masked_ids=ids.astype(np.int32),
            next_sentence_label=NEXT_IS_RANDOM if pair.is_random_next else NEXT_IS_REAL,
        )
        for j, (pair, (input_ids, token_type_ids), (positions, ids)) in enumerate(
            zip(pairs, inputs, masks, strict=True)
        )
    ]
