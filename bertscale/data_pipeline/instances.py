"""Pure functions: NSP pairs and truncation after Google's create_pretraining_data.py; the masks
they carry come from :mod:`bertscale.masking`.

Every function takes an explicit ``numpy.random.Generator``. The pipeline seeds one per document
from ``(seed, doc_id)``, so a document's samples never depend on which worker built them.
Per-pair and per-sequence views of these functions (what the tests state properties on) are in
:mod:`bertscale.data_pipeline.reference`.

Two deliberate departures from the reference, both to keep the statistics the paper states:
- The coin for "B is random" is tossed for every pair (p = 0.5). When the chunk holds a single
  sentence and the coin says "real", that sentence is cut at a random token into A and B (the
  reference forces such pairs to be random, which pushes the random share above one half).
- Masked token counts are taken over non-special tokens, and random replacements are drawn from
  the non-special vocabulary.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import numpy as np

from bertscale.data_pipeline.config import PairsConfig
from bertscale.data_pipeline.schema import ARRAY_FIELDS, NEXT_IS_RANDOM, NEXT_IS_REAL, Sample, SpecialTokens
from bertscale.masking import mask_flat


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


def _flat(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
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
            **{
                name: _flat([getattr(s, name) for s in samples], dtype)
                for name, dtype in ARRAY_FIELDS.items()
            },
            lengths=np.array([s.num_tokens for s in samples], dtype=np.int64),
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


@dataclass(frozen=True)
class SampleRecipe:
    """Everything a document's samples depend on besides the corpus; the same for the whole run."""

    pairs: PairsConfig
    pool: np.ndarray  # documents eligible as the source of a random B
    special: SpecialTokens  # the tokenizer's ids ([CLS]/[SEP] frame; masking's reserved ids)
    seed: int
    word_start: np.ndarray | None = None  # bool per id: used when pairs.whole_word_masking


def range_samples(corpus: Corpus, first: int, last: int, recipe: SampleRecipe) -> SampleArrays:
    """All samples of documents ``first..last-1``: pairs per document (sequential by nature), then
    inputs and masks for the whole range in a handful of numpy calls.

    Every document draws from its own generator, seeded by (seed, doc_id) only, first its pairs,
    then its masks: the output for a document is the same whatever range it is built in.
    """
    cfg = recipe.pairs
    rngs, spans, is_random, doc_ids = [], [], [], []
    for doc_id in range(first, last):
        rng = np.random.default_rng([recipe.seed, doc_id])
        s, r = pair_spans(corpus, doc_id, recipe.pool, cfg.max_seq_length, cfg.short_seq_prob, rng)
        if len(s):
            rngs.append((rng, len(s)))
            spans.append(s)
            is_random.append(r)
            doc_ids.append(doc_id)
    pairs_per_doc = np.array([n for _, n in rngs], dtype=np.int64)
    all_spans = np.concatenate([np.zeros((0, 4), np.int64), *spans])
    all_spans = truncate_spans(all_spans, cfg.max_seq_length - 3, rngs)
    input_ids, token_type_ids, lengths = pair_inputs(all_spans, corpus.tokens, recipe.special)
    positions, ids, num_predictions = mask_flat(
        input_ids, lengths, rngs, cfg.dupe_factor, cfg.masked_lm_prob, cfg.max_predictions_per_seq,
        recipe.special.masking_vocab(), recipe.word_start if cfg.whole_word_masking else None,
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
