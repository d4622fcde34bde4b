"""Document-level deduplication (exact + MinHash LSH near-duplicates) and a contamination report.

Pure functions over clean spill files, run as Ray tasks by run.py:

1. :func:`signatures` (one task per group of clean files): each document's exact hash (blake2b of
   its sentences) and MinHash signature (datasketch, word n-gram shingles).
2. :func:`collisions` (one task per group of LSH bands): documents whose band (or exact hash)
   equals that of an *earlier* document. That is datasketch ``MinHashLSH``'s candidate rule with
   the same band layout, applied band by band, so no task holds more than its bands' columns.
3. The driver unions the answers; :func:`bertscale.data_pipeline.spill.drop_documents` rewrites
   each clean file without its duplicates.

The rule — keep a document unless an earlier one (in input order) collides with it — depends on
no worker count and needs no transitive closure.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from bertscale.data_pipeline import spill
from bertscale.data_pipeline.config import DedupConfig
from bertscale.errors import DataError

_WORD = re.compile(r"\w+")


def lsh_bands(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for the threshold (equal weights)."""
    return _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)


def shingles(text: str, size: int) -> set[bytes]:
    """Word ``size``-grams of the lower-cased text (the whole text if it is shorter)."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def exact_hash(sentences: list[str]) -> int:
    return int.from_bytes(hashlib.blake2b("\n".join(sentences).encode(), digest_size=8).digest(), "little")


def signatures(paths: list[Path], cfg: DedupConfig, seed: int, out: Path) -> int:
    """Exact hash + MinHash of every document of the clean files, in order → ``out`` (.npz); → count."""
    template = MinHash(num_perm=cfg.num_perm, seed=seed)  # permutations drawn once, copied per document
    hashes, minhashes = [], []
    for path in paths:
        for doc in spill.read_documents(path):
            hashes.append(exact_hash(doc))
            m = template.copy()
            m.update_batch(list(shingles(" ".join(doc), cfg.shingle_words)))
            minhashes.append(m.hashvalues.astype(np.uint32))
    with spill.spill_file(out) as f:
        np.savez(
            f,
            exact=np.array(hashes, np.uint64),
            minhash=np.stack(minhashes) if minhashes else np.zeros((0, cfg.num_perm), np.uint32),
        )
    return len(hashes)


def _later_duplicates(keys: np.ndarray) -> np.ndarray:
    """Rows equal to an earlier row → their indices (ascending)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    later = np.ones(len(keys), bool)
    later[first] = False
    return np.flatnonzero(later)


def collisions(paths: list[Path], first_band: int, last_band: int, rows: int, exact: bool) -> np.ndarray:
    """Documents (global index over ``paths``) whose exact hash (``exact``) or one of the bands
    ``first_band..last_band-1`` equals that of an earlier document. Holds only those columns."""
    found = []
    if exact:
        hashes = np.concatenate([np.zeros(0, np.uint64), *(np.load(p)["exact"] for p in paths)])
        found.append(_later_duplicates(hashes[:, None]))
    if last_band > first_band:
        columns = np.concatenate(
            [np.load(p)["minhash"][:, first_band * rows : last_band * rows] for p in paths]
        )
        for band in range(last_band - first_band):
            found.append(_later_duplicates(columns[:, band * rows : (band + 1) * rows]))
    return np.unique(np.concatenate([np.zeros(0, np.int64), *found]))


# --- contamination: n-gram overlap with fine-tuning test files -----------------------------------


def ngram_hashes(text: str, size: int) -> np.ndarray:
    """Hashes of the word ``size``-grams of each line of ``text`` (lines shorter than that: none)."""
    values = set()
    for line in text.splitlines():
        words = _WORD.findall(line.lower())
        for i in range(len(words) - size + 1):
            gram = " ".join(words[i : i + size]).encode()
            values.add(int.from_bytes(hashlib.blake2b(gram, digest_size=8).digest(), "little"))
    return np.array(sorted(values), np.uint64)


def file_ngrams(path: str, size: int) -> np.ndarray:
    """:func:`ngram_hashes` of a UTF-8 test file; an unreadable one is a DataError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable contamination test file ({type(err).__name__}: {err})") from None
    return ngram_hashes(text, size)


def overlap(paths: list[Path], test_grams: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """→ (the test n-grams found in these clean files' documents, documents holding any)."""
    found = np.zeros(len(test_grams), bool)
    documents = 0
    for path in paths:
        for doc in spill.read_documents(path):
            grams = ngram_hashes(" ".join(doc), size)  # n-grams may span sentences
            hit = np.isin(test_grams, grams, assume_unique=True)
            documents += bool(hit.any())
            found |= hit
    return test_grams[found], documents
