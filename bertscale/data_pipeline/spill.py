"""Intermediate results on disk, written and read by tasks, so the Ray driver holds counts, never the corpus.

A run spills into one directory inside the output's temporary directory (gone when the output
is published):

    clean-{u:06d}-{i:06d}.bin  cleaned documents of batch i of read unit u (a file or byte range)
    signatures-{g:06d}.npz    exact hashes + MinHash signatures of group g's documents (dedup on)
    sample-{g:06d}.bin        the tokenizer's seeded sample of group g's sentences (above the cap)
    encoded-{p:06d}.*.bin     token ids, sentence lengths, sentences per document of encode part p
    tokens.bin, sentence_offsets.bin, document_offsets.bin    the joined corpus (memory-mapped)
    records-{p:06d}.bin       tar records of the samples of document range p
    samples-{p:06d}.npy       where each sample's records lie, its tokens, document and label
    samples.npy, plan-{split}.npy    all samples' metadata, and each shard's samples (the plan)

Each file's name is fixed by its place in the work and it is published by rename, so a task that
Ray retries after its worker died rewrites the same bytes and never leaves half a file in view.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bertscale.data_pipeline.instances import Corpus
from bertscale.data_pipeline.shards import RecordFile, SampleBatch

COPY_CHUNK = 1 << 20  # bytes per read when joining files
OFFSETS_CHUNK = 1 << 17  # int64 lengths per cumulative-sum step
CORPUS_FILES = {"tokens": np.int32, "sentence_offsets": np.int64, "document_offsets": np.int64}
ENCODED_PARTS = {"tokens": np.int32, "lengths": np.int64, "docs": np.int64}


@contextlib.contextmanager
def spill_file(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` under a unique temporary name, renamed over it on success.

    No fsync: a spill file lives no longer than the run, and a crashed run starts over.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- cleaned text ------------------------------------------------------------------------------


def write_documents(path: Path, documents: list[list[str]], raw_index: np.ndarray | None = None) -> int:
    """Documents (lists of sentences) → one file; returns the number of sentences.

    ``raw_index`` (default 0, 1, ...): each document's place among the raw documents its batch read
    (documents left without text are not written), so a cap on raw documents can cut the file.
    """
    sentences = [s for doc in documents for s in doc]
    raw_index = np.arange(len(documents), dtype=np.int64) if raw_index is None else raw_index
    with spill_file(path) as f:
        np.save(f, np.array([len(d) for d in documents], np.int64))
        np.save(f, np.array([len(s) for s in sentences], np.int64))
        np.save(f, np.asarray(raw_index, np.int64))
        f.write("".join(sentences).encode("utf-8", "surrogatepass"))
    return len(sentences)


def read_documents(path: Path) -> list[list[str]]:
    return _read_documents(path)[0]


def _read_documents(path: Path) -> tuple[list[list[str]], np.ndarray]:
    with open(path, "rb") as f:
        per_doc, lengths, raw_index = np.load(f), np.load(f), np.load(f)
        text = f.read().decode("utf-8", "surrogatepass")
    ends = np.cumsum(lengths).tolist()
    sentences = [text[a:b] for a, b in itertools.pairwise([0, *ends])]
    bounds = np.cumsum([0, *per_doc.tolist()]).tolist()
    return [sentences[a:b] for a, b in itertools.pairwise(bounds)], raw_index


def trim_documents(path: Path, raw_limit: int) -> tuple[int, int]:
    """Keep the documents of the first ``raw_limit`` raw documents → (documents, sentences) left."""
    documents, raw_index = _read_documents(path)
    kept = int(np.searchsorted(raw_index, raw_limit))
    return kept, write_documents(path, documents[:kept], raw_index[:kept])


def drop_documents(path: Path, drop: np.ndarray) -> tuple[int, int]:
    """Rewrite without the documents at positions ``drop`` → (documents, sentences) left."""
    documents, raw_index = _read_documents(path)
    keep = np.ones(len(documents), bool)
    keep[drop] = False
    kept = [doc for doc, k in zip(documents, keep.tolist(), strict=True) if k]
    return len(kept), write_documents(path, kept, raw_index[keep])


class SpilledSentences(Sequence[str]):
    """Every sentence of the clean files, in order, read on demand with one file in memory.

    The tokenizer trainer reads all of them or a sorted sample, front to back, so each file is
    loaded once.
    """

    def __init__(self, paths: list[Path], sentences_per_file: list[int]) -> None:
        self.paths = paths
        self.starts = np.cumsum([0, *sentences_per_file])
        self._loaded, self._sentences = -1, []

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self._loaded < 0 or not self.starts[self._loaded] <= index < self.starts[self._loaded + 1]:
            self._loaded = int(np.searchsorted(self.starts, index, side="right")) - 1
            self._sentences = [s for doc in read_documents(self.paths[self._loaded]) for s in doc]
        return self._sentences[index - int(self.starts[self._loaded])]

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            for doc in read_documents(path):
                yield from doc


# --- token ids ---------------------------------------------------------------------------------


def encoded_paths(spill: Path, part: int) -> dict[str, Path]:
    return {name: spill / f"encoded-{part:06d}.{name}.bin" for name in ENCODED_PARTS}


@contextlib.contextmanager
def encoded_writer(spill: Path, part: int) -> Iterator[dict[str, BinaryIO]]:
    """The three files of an encode part, opened for appending arrays; all published together."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(spill_file(p)) for name, p in encoded_paths(spill, part).items()}


def join_corpus(spill: Path, parts: int) -> int:
    """The encode parts → one corpus (tokens, sentence offsets, document offsets), streamed;
    returns the number of sentences."""
    sources = [encoded_paths(spill, p) for p in range(parts)]
    with spill_file(spill / "tokens.bin") as out:
        for source in sources:
            with open(source["tokens"], "rb") as f:
                shutil.copyfileobj(f, out, COPY_CHUNK)
    _offsets([s["docs"] for s in sources], spill / "document_offsets.bin")
    return _offsets([s["lengths"] for s in sources], spill / "sentence_offsets.bin")


def _offsets(sources: Iterable[Path], target: Path) -> int:
    """int64 counts in ``sources``, back to back → their offsets, starting at 0; returns how many counts."""
    total, count = np.zeros(1, np.int64), 0
    with spill_file(target) as out:
        out.write(total.tobytes())
        for source in sources:
            with open(source, "rb") as f:
                while len(chunk := np.fromfile(f, np.int64, count=OFFSETS_CHUNK)):
                    offsets = np.cumsum(chunk) + total[-1]
                    out.write(offsets.tobytes())
                    total, count = offsets[-1:], count + len(chunk)
    return count


def load_corpus(spill: Path) -> Corpus:
    """The joined corpus, memory-mapped: a task touches only the pages of the documents it reads."""
    arrays = {name: _mapped(spill / f"{name}.bin", dtype) for name, dtype in CORPUS_FILES.items()}
    return Corpus(**arrays)


def _mapped(path: Path, dtype: type) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap refuses empty files
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


# --- tar records -------------------------------------------------------------------------------


def spill_records(batches: Iterable[SampleBatch], path: Path) -> SampleBatch:
    """Write the batches' records to ``path`` one batch at a time → the same samples, kept as
    metadata (doc ids, labels, token counts, spans) with their bytes left in the file."""
    spans, doc_ids, num_tokens, labels = [np.zeros((0, 2), np.int64)], [], [], []
    with spill_file(path) as f:
        for batch in batches:
            base = np.zeros(len(batch.blobs), np.int64)  # where each blob lands in the file
            for i, blob in enumerate(batch.blobs):
                base[i] = f.tell()
                f.write(memoryview(blob))
            spans.append(batch.spans + base[batch.blob_index][:, None])
            doc_ids.append(batch.doc_ids)
            num_tokens.append(batch.num_tokens)
            labels.append(batch.labels)
    return SampleBatch(
        blobs=[RecordFile(path)],
        blob_index=np.zeros(sum(len(s) for s in spans), np.int64),
        spans=np.concatenate(spans),
        doc_ids=np.concatenate([np.zeros(0, np.int64), *doc_ids]),
        num_tokens=np.concatenate([np.zeros(0, np.int64), *num_tokens]),
        labels=np.concatenate([np.zeros(0, np.uint8), *labels]),
    )


# --- per-sample metadata: what the plan and the shard writers need, never the records ----------

SAMPLE_DTYPE = np.dtype(
    [
        ("start", "<i8"),
        ("end", "<i8"),
        ("num_tokens", "<i8"),
        ("doc_id", "<i8"),
        ("label", "u1"),
        ("part", "<i4"),
    ]
)


def save_samples(path: Path, batch: SampleBatch, part: int) -> None:
    """The metadata of a spilled batch (one records file, see :func:`spill_records`) → ``path``."""
    table = np.zeros(len(batch), SAMPLE_DTYPE)
    table["start"], table["end"] = batch.spans[:, 0], batch.spans[:, 1]
    table["num_tokens"], table["doc_id"], table["label"] = batch.num_tokens, batch.doc_ids, batch.labels
    table["part"] = part
    with spill_file(path) as f:
        np.save(f, table)


def join_samples(paths: list[Path], target: Path) -> np.ndarray:
    """The parts' metadata back to back → ``target`` (memory-mapped by the shard writers); returned."""
    table = np.concatenate([np.zeros(0, SAMPLE_DTYPE), *(np.load(p) for p in paths)])
    with spill_file(target) as f:
        np.save(f, table)
    return table


def sample_batch(table: np.ndarray, records: list[Path]) -> SampleBatch:
    """Rows of the metadata table → a SampleBatch whose bytes are read from the parts' records files."""
    parts, blob_index = np.unique(table["part"], return_inverse=True)
    return SampleBatch(
        blobs=[RecordFile(records[p]) for p in parts.tolist()],
        blob_index=blob_index.astype(np.int64).reshape(-1),
        spans=np.stack([table["start"], table["end"]], axis=1).astype(np.int64),
        doc_ids=table["doc_id"].astype(np.int64),
        num_tokens=table["num_tokens"].astype(np.int64),
        labels=table["label"].astype(np.uint8),
    )
