"""Pure functions: NSP pairs, truncation and MLM masking, after Google's create_pretraining_data.py.

Every function takes an explicit ``numpy.random.Generator``. The pipeline seeds one per document
from ``(seed, doc_id)``, so a document's samples never depend on which worker built them.

Two deliberate departures from the reference, both to keep the statistics the paper states:
- The coin for "B is random" is tossed for every pair (p = 0.5). When the chunk holds a single
  sentence and the coin says "real", that sentence is cut at a random token into A and B (the
  reference forces such pairs to be random, which pushes the random share above one half).
- Masked token counts are taken over non-reserved tokens, and random replacements are drawn from
  the non-reserved vocabulary (reserved: the tokenizer's special ids and unused slots, see
  :class:`~bertscale.data_pipeline.schema.SpecialTokens`).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np

from bertscale.data_pipeline.config import PairsConfig
from bertscale.data_pipeline.schema import NEXT_IS_RANDOM, NEXT_IS_REAL, Sample, SpecialTokens


@dataclass
class Corpus:
    """All tokenized sentences as flat arrays (in memory, or memory-mapped from the spill files)."""

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


def _flat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate([np.zeros(0, dtype), *(np.ravel(a) for a in arrays)]).astype(dtype)


@dataclass
class SampleArrays:
    """Samples of a document range as flat arrays, sample after sample (what shards serialise)."""

    input_ids: np.ndarray  # (sum T,) int32
    token_type_ids: np.ndarray  # (sum T,) uint8
    lengths: np.ndarray  # (n,) T per sample
    masked_positions: np.ndarray  # (sum D*M,) int16, each sample's (D, M) block row-major
    masked_ids: np.ndarray  # (sum D*M,) int32
    num_predictions: np.ndarray  # (n,) M per sample
    next_sentence_label: np.ndarray  # (n,) uint8
    keys: list[str]
    doc_ids: np.ndarray  # (n,) int64
    dupe_factor: int

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_samples(cls, samples: list[Sample], doc_ids: list[int]) -> SampleArrays:
        draws = {s.masked_positions.shape[0] for s in samples}
        if len(draws) > 1:
            raise ValueError(f"samples mix dupe factors {sorted(draws)}")
        return cls(
            input_ids=_flat([s.input_ids for s in samples], np.int32),
            token_type_ids=_flat([s.token_type_ids for s in samples], np.uint8),
            lengths=np.array([s.num_tokens for s in samples], dtype=np.int64),
            masked_positions=_flat([s.masked_positions for s in samples], np.int16),
            masked_ids=_flat([s.masked_ids for s in samples], np.int32),
            num_predictions=np.array([s.masked_positions.shape[1] for s in samples], dtype=np.int64),
            next_sentence_label=np.array([s.next_sentence_label for s in samples], dtype=np.uint8),
            keys=[s.key for s in samples],
            doc_ids=np.asarray(doc_ids, dtype=np.int64),
            dupe_factor=draws.pop() if draws else 1,
        )

    def to_samples(self) -> list[Sample]:
        bounds = np.concatenate([[0], np.cumsum(self.lengths)])
        mask_bounds = np.concatenate([[0], np.cumsum(self.num_predictions * self.dupe_factor)])
        return [
            Sample(
                key=key,
                input_ids=self.input_ids[bounds[i] : bounds[i + 1]],
                token_type_ids=self.token_type_ids[bounds[i] : bounds[i + 1]],
                masked_positions=self.masked_positions[mask_bounds[i] : mask_bounds[i + 1]].reshape(
                    self.dupe_factor, -1
                ),
                masked_ids=self.masked_ids[mask_bounds[i] : mask_bounds[i + 1]].reshape(self.dupe_factor, -1),
                next_sentence_label=int(self.next_sentence_label[i]),
            )
            for i, key in enumerate(self.keys)
        ]


@dataclass
class Pair:
    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool


def _cuts(len_a: np.ndarray, len_b: np.ndarray, max_num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens each side loses: the longer side alone until level, then alternately (B first)."""
    excess = np.maximum(len_a + len_b - max_num_tokens, 0)
    first = np.minimum(excess, np.abs(len_a - len_b))
    rest = excess - first
    a_longer = len_a > len_b
    return np.where(a_longer, first, 0) + rest // 2, np.where(a_longer, 0, first) + (rest + 1) // 2


def truncate_spans(
    spans: np.ndarray, max_num_tokens: int, groups: list[tuple[np.random.Generator, int]]
) -> np.ndarray:
    """Trim the longer side (B on ties) of each (a_start, a_end, b_start, b_end) row to fit.

    Same distribution as the reference's token-by-token loop, in closed form: how many tokens
    each side loses is fixed by the leveling rule, and how many of those come off the front is
    Binomial(n, 1/2). ``groups``: consecutive runs of rows and the generator each draws from.
    """
    cut_a, cut_b = _cuts(spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2], max_num_tokens)
    cuts = np.stack([cut_a, cut_b], axis=1)
    bounds = np.cumsum([0, *(rows for _, rows in groups)])
    front = [
        rng.binomial(cuts[a:b], 0.5) for (rng, _), a, b in zip(groups, bounds[:-1], bounds[1:], strict=True)
    ]
    front_a, front_b = np.concatenate([np.zeros((0, 2), np.int64), *front]).T
    out = spans.copy()
    out[:, 0] += front_a
    out[:, 1] -= cut_a - front_a
    out[:, 2] += front_b
    out[:, 3] -= cut_b - front_b
    return out


def truncate_pair(a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng: np.random.Generator):
    """:func:`truncate_spans` for one pair of arrays."""
    ((a0, a1, b0, b1),) = truncate_spans(np.array([[0, len(a), 0, len(b)]]), max_num_tokens, [(rng, 1)])
    return a[a0:a1], b[b0:b1]


def pair_spans(
    corpus: Corpus, doc_id: int, pool: np.ndarray, max_seq_length: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Sentence pairs of one document as spans of ``corpus.tokens``: ((P, 4) a_start, a_end,
    b_start, b_end; (P,) is_random_next). A: consecutive sentences; B: the rest or another document.

    One block of uniforms is drawn up front (four per chunk at most, a chunk per sentence at
    most), so the loop is plain Python arithmetic on lists; ``s`` indexes sentences. The spans
    are not yet truncated to ``max_seq_length``: :func:`truncate_spans` does that next, with the
    same generator, for many documents at once.
    """
    off, docs = corpus.sentence_offsets, corpus.document_offsets
    first, last = int(docs[doc_id]), int(docs[doc_id + 1])
    starts = off[first : last + 1].tolist()  # starts[s - first]: where sentence s begins
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    u = iter(rng.random(4 * (last - first) + 2).tolist())
    target_length = max_num_tokens
    if next(u) < short_seq_prob:
        target_length = 2 + int(next(u) * (max_num_tokens - 1))

    spans: list[tuple[int, int, int, int]] = []
    is_random: list[bool] = []
    chunk_start = first
    while chunk_start < last:
        # the chunk ends at the first sentence that brings it to target_length, or the document's end
        reach = bisect.bisect_left(
            starts, starts[chunk_start - first] + target_length, chunk_start - first + 1
        )
        s = min(reach + first - 1, last - 1)
        num_sentences = s + 1 - chunk_start
        u_cut, u_coin, u_other, u_start = next(u), next(u), next(u), next(u)
        a_end = chunk_start + 1 + int(u_cut * (num_sentences - 1))
        a0, a1 = starts[chunk_start - first], starts[a_end - first]
        other = _random_document(pool, doc_id, u_other, rng) if u_coin < 0.5 else None
        if other is not None:
            # sentences from a random start in the other document until B reaches its target
            target_b_length = max(1, target_length - (a1 - a0))
            other_first, other_last = int(docs[other]), int(docs[other + 1])
            start = other_first + int(u_start * (other_last - other_first))
            reach = int(np.searchsorted(off[start + 1 : other_last + 1], off[start] + target_b_length))
            b0, b1 = int(off[start]), int(off[min(start + 1 + reach, other_last)])
            chunk_start = a_end  # the unused sentences start the next chunk
        elif num_sentences >= 2:
            b0, b1 = a1, starts[s + 1 - first]
            chunk_start = s + 1
        elif a1 - a0 >= 2:  # one sentence: A and B are its two halves, cut at random
            a1 = b0 = a0 + 1 + int(u_start * (a1 - a0 - 1))
            b1 = starts[s + 1 - first]
            chunk_start = s + 1
        else:  # a one-token sentence alone: no pair possible
            chunk_start = s + 1
            continue
        spans.append((a0, a1, b0, b1))
        is_random.append(other is not None)
    if not spans:
        return np.zeros((0, 4), np.int64), np.zeros(0, bool)
    return np.array(spans, dtype=np.int64), np.array(is_random)


def _random_document(pool: np.ndarray, doc_id: int, u: float, rng: np.random.Generator) -> int | None:
    other = int(pool[int(u * len(pool))])
    for _ in range(9):
        if other != doc_id:
            return other
        other = int(pool[rng.integers(len(pool))])
    return other if other != doc_id else None  # None: the pool holds only this document


def create_pairs(
    corpus: Corpus, doc_id: int, pool: np.ndarray, max_seq_length: int, short_seq_prob: float,
    rng: np.random.Generator,
) -> list[Pair]:  # fmt: skip
    """:func:`pair_spans` as token arrays (slices of ``corpus.tokens``, no copies)."""
    spans, is_random = pair_spans(corpus, doc_id, pool, max_seq_length, short_seq_prob, rng)
    spans = truncate_spans(spans, max_seq_length - 3, [(rng, len(spans))])
    t = corpus.tokens
    return [
        Pair(t[a0:a1], t[b0:b1], bool(r))
        for (a0, a1, b0, b1), r in zip(spans.tolist(), is_random, strict=True)
    ]


def pair_inputs(
    spans: np.ndarray, tokens: np.ndarray, special: SpecialTokens
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[CLS] A [SEP] B [SEP]`` for every span row, back to back, by index arithmetic
    → (input_ids int32, token_type_ids uint8, lengths)."""
    len_a, len_b = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    lengths = len_a + len_b + 3
    sample_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rep = lambda x: np.repeat(x, lengths)  # noqa: E731 - per-sample value at each token
    p = np.arange(int(lengths.sum())) - rep(sample_start)  # position within its sample
    la = rep(len_a)
    source = np.where(p <= la, rep(spans[:, 0]) + p - 1, rep(spans[:, 2]) + p - la - 2)
    input_ids = tokens[np.clip(source, 0, len(tokens) - 1)].astype(np.int32)
    input_ids[sample_start] = special.cls_id
    input_ids[sample_start + len_a + 1] = special.sep_id
    input_ids[sample_start + lengths - 1] = special.sep_id
    return input_ids, (p >= la + 2).astype(np.uint8), lengths


def _word_groups(candidates: np.ndarray, input_ids: np.ndarray, word_start: np.ndarray) -> list[np.ndarray]:
    """Split candidate positions into whole words: a word begins at a word-start piece (SentencePiece
    "▁…", any WordPiece piece but a "##" continuation) or after a gap."""
    starts = word_start[input_ids[candidates]]
    starts[1:] |= np.diff(candidates) != 1
    starts[0] = True
    return np.split(candidates, np.flatnonzero(starts)[1:])


def _choose_positions(num_to_predict: int, rng: np.random.Generator, words: list[np.ndarray]) -> np.ndarray:
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
        upper = (
            counts[rows] - sizes[rows] + j
        )  # draw from 0..upper; on a repeat take upper (new by construction)
        pick = rows * width + (u[row_start[rows] + j] * (upper + 1)).astype(np.int64)
        taken[np.where(taken[pick], rows * width + upper, pick)] = True
    return taken.reshape(len(counts), width)


def mask_flat(
    flat: np.ndarray, lengths: np.ndarray, groups: list[tuple[np.random.Generator, int]], num_draws: int,
    masked_lm_prob: float, max_predictions: int, special: SpecialTokens, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """MLM draws for sequences lying back to back in ``flat``, all at once.

    ``groups``: consecutive runs of sequences and the generator each run draws from (one per
    document in the pipeline, so the draws never depend on how documents are batched).
    Returns (positions int64, ids int32, M per sequence); each sequence's (D, M) block row-major,
    positions within the sequence, sorted per row.

    15% of the non-reserved tokens are chosen; of those 80% become [MASK], 10% a random
    non-reserved token and 10% stay. ``word_start`` (bool per vocabulary id) turns on whole-word masking.
    """
    n = len(lengths)
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    reserved = special.is_special
    candidates = np.flatnonzero(~reserved[flat])  # (K,) flat positions, sequence by sequence
    counts = np.bincount(np.repeat(np.arange(n), lengths)[candidates], minlength=n)
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    num_to_predict = np.minimum(np.clip(np.round(counts * masked_lm_prob), 1, max_predictions), counts)
    num_to_predict = num_to_predict.astype(np.int64)
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
                words = _word_groups(np.flatnonzero(~reserved[seq_ids]), seq_ids, word_start)
                for d in range(num_draws):
                    chosen[i, d, : num_to_predict[i]] = np.sort(
                        _choose_positions(num_to_predict[i], rng, words)
                    )
        positions = chosen[(np.arange(width) < num_to_predict[:, None, None]).repeat(num_draws, axis=1)]
    roll, pick = u[1], u[2]
    replacements = special.replacement_ids
    random_ids = replacements[(pick * len(replacements)).astype(np.int64)]
    ids = np.where(
        roll < 0.8, special.mask_id, np.where(roll < 0.9, random_ids, flat[seq_start[seq] + positions])
    )
    return positions, ids.astype(np.int32), num_to_predict


def mask_batch(
    sequences: list[np.ndarray], num_draws: int, masked_lm_prob: float, max_predictions: int,
    special: SpecialTokens, rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """:func:`mask_tokens` for many sequences at once, one generator."""
    lengths = np.array([len(x) for x in sequences], dtype=np.int64)
    positions, ids, m = mask_flat(
        np.concatenate(sequences), lengths, [(rng, len(sequences))], num_draws, masked_lm_prob,
        max_predictions, special, word_start,
    )  # fmt: skip
    bounds = np.concatenate([[0], np.cumsum(num_draws * m)])
    return [
        (positions[a:b].reshape(num_draws, -1), ids[a:b].reshape(num_draws, -1))
        for a, b in itertools.pairwise(bounds)
    ]


def mask_tokens(
    input_ids: np.ndarray, num_draws: int, masked_lm_prob: float, max_predictions: int,
    special: SpecialTokens, rng: np.random.Generator, word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``num_draws`` independent MLM draws → (positions, ids), each (D, M), positions sorted per row."""
    return mask_batch([input_ids], num_draws, masked_lm_prob, max_predictions, special, rng, word_start)[0]


def range_samples(
    corpus: Corpus, first: int, last: int, pool: np.ndarray, cfg: PairsConfig, special: SpecialTokens,
    seed: int, word_start: np.ndarray | None = None,
) -> SampleArrays:  # fmt: skip
    """All samples of documents ``first..last-1``: pairs per document (sequential by nature), then
    inputs and masks for the whole range in a handful of numpy calls.

    Every document draws from its own generator, seeded by (seed, doc_id) only, first its pairs,
    then its masks: the output for a document is the same whatever range it is built in.
    """
    rngs, spans, is_random, doc_ids = [], [], [], []
    for doc_id in range(first, last):
        rng = np.random.default_rng([seed, doc_id])
        s, r = pair_spans(corpus, doc_id, pool, cfg.max_seq_length, cfg.short_seq_prob, rng)
        if len(s):
            rngs.append((rng, len(s)))
            spans.append(s)
            is_random.append(r)
            doc_ids.append(doc_id)
    pairs_per_doc = np.array([n for _, n in rngs], dtype=np.int64)
    all_spans = np.concatenate([np.zeros((0, 4), np.int64), *spans])
    all_spans = truncate_spans(all_spans, cfg.max_seq_length - 3, rngs)
    input_ids, token_type_ids, lengths = pair_inputs(all_spans, corpus.tokens, special)
    positions, ids, num_predictions = mask_flat(
        input_ids, lengths, rngs, cfg.dupe_factor, cfg.masked_lm_prob, cfg.max_predictions_per_seq,
        special, word_start if cfg.whole_word_masking else None,
    )  # fmt: skip
    sample_doc = np.repeat(np.array(doc_ids, dtype=np.int64), pairs_per_doc)
    pair_index = np.arange(len(sample_doc)) - np.repeat(
        np.cumsum(pairs_per_doc) - pairs_per_doc, pairs_per_doc
    )
    labels = np.concatenate([np.zeros(0, bool), *is_random])
    return SampleArrays(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        lengths=lengths,
        masked_positions=positions.astype(np.int16),
        masked_ids=ids,
        num_predictions=num_predictions,
        next_sentence_label=np.where(labels, NEXT_IS_RANDOM, NEXT_IS_REAL).astype(np.uint8),
        keys=[f"d{d:09d}p{j:05d}" for d, j in zip(sample_doc.tolist(), pair_index.tolist(), strict=True)],
        doc_ids=sample_doc,
        dupe_factor=cfg.dupe_factor,
    )


def document_samples(
    corpus: Corpus, doc_id: int, pool: np.ndarray, cfg: PairsConfig, special: SpecialTokens, seed: int,
    word_start: np.ndarray | None = None,
) -> list[Sample]:  # fmt: skip
    """All samples of one document; the generator depends only on (seed, doc_id)."""
    return range_samples(corpus, doc_id, doc_id + 1, pool, cfg, special, seed, word_start).to_samples()
