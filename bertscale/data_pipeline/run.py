"""The pipeline on Ray: read → clean → tokenizer → encode → pairs + masks → shards + manifest.

The only module importing ray. Work is cut into contiguous document ranges; each document's
randomness comes from (seed, doc_id) and results are gathered in document order, so the
output is byte-identical for any ``num_workers``.

Driver memory does not grow with the corpus: tasks write their results to spill files inside the
output's temporary directory (see :mod:`bertscale.data_pipeline.spill`) and return counts; the driver keeps
tokens per document and a few numbers per sample (doc id, label, tokens, where its records lie),
and reads each shard's records back from the spill files when it writes that shard. With a
multi-node Ray cluster, ``output_dir`` must therefore be on a filesystem every node sees.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm import tqdm

from bertscale.atomic import atomic_directory, atomic_write
from bertscale.config import to_dict
from bertscale.data_pipeline import sources, spill
from bertscale.data_pipeline.config import PairsConfig, PipelineConfig
from bertscale.data_pipeline.instances import Corpus, range_samples
from bertscale.data_pipeline.schema import MANIFEST_NAME, SPLITS, Manifest, SpecialTokens, SplitInfo
from bertscale.data_pipeline.shards import SampleBatch, plan_shards, write_manifest, write_split
from bertscale.data_pipeline.tokenizer import (
    Processor,
    load_tokenizer_model,
    model_sha256,
    processor,
    special_tokens,
    tokenizer_filename,
    tokenizer_kind,
    train_tokenizer,
    word_start_table,
)
from bertscale.errors import DataError

CLEAN_BATCH_CHARS = 256_000  # raw wikitext per cleaning task: small enough to spread, big enough to amortise
BUILD_BLOCK_TOKENS = 1 << 17  # tokens per vectorised pairs/masks/serialise step (memory ~ 30x this)
TASKS_PER_WORKER = 4  # ranges per worker per stage, so an uneven range does not idle the others


# --- stage functions (pure; benchmarks/pipeline.py times them directly) -----------------------


def encode_documents(
    model_proto: bytes, documents: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """→ (flat token ids, length per non-empty sentence, non-empty sentences per document)."""
    return _encode(processor(model_proto), documents)


def _encode(
    sp: Processor, documents: list[list[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids: list[list[int]] = sp.encode([s for doc in documents for s in doc], out_type=int)
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    bounds = np.cumsum([0, *(len(doc) for doc in documents)])
    per_doc = np.array([np.count_nonzero(lengths[a:b]) for a, b in itertools.pairwise(bounds)], np.int64)
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return tokens, lengths[lengths > 0], per_doc


def sample_blocks(
    corpus: Corpus, first: int, last: int, pool: np.ndarray, cfg: PairsConfig, special: SpecialTokens, seed: int,
    word_start: np.ndarray,
) -> Iterator[SampleBatch]:  # fmt: skip
    """Samples of documents ``first..last-1``, serialised to tar records, in blocks of about
    ``BUILD_BLOCK_TOKENS`` (bounded memory; every document's randomness is its own, so the
    blocking changes no byte)."""
    doc_tokens = np.diff(corpus.sentence_offsets[corpus.document_offsets[first : last + 1]])
    bounds = np.searchsorted(
        np.cumsum(doc_tokens), np.arange(BUILD_BLOCK_TOKENS, doc_tokens.sum(), BUILD_BLOCK_TOKENS)
    )
    cuts = np.unique(np.concatenate([[0], bounds + 1, [last - first]]).clip(0, last - first)) + first
    for a, b in itertools.pairwise(cuts.tolist()):
        yield SampleBatch.from_arrays(range_samples(corpus, a, b, pool, cfg, special, seed, word_start))


def build_samples(
    corpus: Corpus, first: int, last: int, pool: np.ndarray, cfg: PairsConfig, special: SpecialTokens, seed: int,
    word_start: np.ndarray,
) -> SampleBatch:  # fmt: skip
    """:func:`sample_blocks` in memory, as one batch."""
    return SampleBatch.concatenate(
        list(sample_blocks(corpus, first, last, pool, cfg, special, seed, word_start))
    )


# --- Ray tasks (module level so workers import them by name): results go to spill files -------


@ray.remote(num_cpus=1)
def _clean_task(raws: list[sources.RawDocument], min_sentence_chars: int, path: Path) -> tuple[int, int]:
    """→ (documents with text, sentences), the documents written to ``path``."""
    cleaned = (sources.clean_document(raw, min_sentence_chars) for raw in raws)
    documents = [doc.sentences for doc in cleaned if doc.sentences]
    return len(documents), spill.write_documents(path, documents)


def _encode_files(model_proto: bytes, paths: list[Path], spill_dir: Path, part: int) -> np.ndarray:
    """Encode clean files one at a time into encode part ``part`` → tokens per kept document."""
    sp, doc_tokens = processor(model_proto), []  # the model loaded once, not per file
    with spill.encoded_writer(spill_dir, part) as out:
        for path in paths:
            tokens, lengths, per_doc = _encode(sp, spill.read_documents(path))
            per_doc = per_doc[per_doc > 0]  # documents left without a token are dropped
            out["tokens"].write(tokens.tobytes())
            out["lengths"].write(lengths.tobytes())
            out["docs"].write(per_doc.tobytes())
            ends = np.cumsum(lengths)[np.cumsum(per_doc) - 1]
            doc_tokens.append(np.diff(ends, prepend=0))
    return np.concatenate([np.zeros(0, np.int64), *doc_tokens])


def _spill_samples(
    spill_dir: Path, first: int, last: int, pool: np.ndarray, cfg: PairsConfig, special: SpecialTokens, seed: int,
    word_start: np.ndarray, path: Path,
) -> SampleBatch:  # fmt: skip
    corpus = spill.load_corpus(spill_dir)
    return spill.spill_records(
        sample_blocks(corpus, first, last, pool, cfg, special, seed, word_start), path
    )


# named after the stage functions they run (what `ps` shows as ray::<name>)
_encode_task = ray.remote(num_cpus=1)(_encode_files).options(name="encode_documents")
_samples_task = ray.remote(num_cpus=1)(_spill_samples).options(name="build_samples")


# --- driver ----------------------------------------------------------------------------------


def run_pipeline(cfg: PipelineConfig, timings: dict[str, float] | None = None) -> Path:
    """Build the dataset described by ``cfg``; returns the output directory.

    ``timings``, if given, receives the wall seconds of each stage (for benchmarks/pipeline.py).
    """
    output = Path(cfg.output_dir)
    if output.exists() and any(output.iterdir()) and not (output / MANIFEST_NAME).is_file():
        raise DataError(
            f"{output}: exists, is not empty and holds no {MANIFEST_NAME}; refusing to replace it"
        )
    started = _init_ray(cfg.num_workers)
    try:
        return _run(cfg, output, _Clock(timings if timings is not None else {}))
    finally:
        if started:
            ray.shutdown()


def _init_ray(num_workers: int) -> bool:
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster
        ray.init(logging_level="WARNING")
    else:
        ray.init(num_cpus=num_workers, include_dashboard=False, logging_level="WARNING")
    return True


class _Skips:
    """Bad inputs: recorded with a reason and announced in one line, or fatal under on_bad_input=fail."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.items: list[dict[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        if self.fail:
            raise DataError(f"{path}: {reason}")
        self.items.append({"path": path, "reason": reason})
        print(f"warning: {path}: {reason}; skipped", file=sys.stderr, flush=True)


class _Clock:
    """Wall seconds per stage, measured from one ``lap`` to the next."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.last = into, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.into[stage] = now - self.last
        self.last = now


def _raw_documents(cfg: PipelineConfig, skips: _Skips) -> Iterator[sources.RawDocument]:
    wiki_files, missing_wiki = sources.expand_inputs(cfg.inputs.wiki)
    book_files, missing_books = sources.expand_inputs(cfg.inputs.books)
    for item in missing_wiki + missing_books:
        skips.add(item["path"], item["reason"])
    for path in wiki_files:
        kept = 0
        try:
            for raw in sources.iter_wiki_pages(path):
                kept += 1
                yield raw
        except DataError as err:
            skips.add(path, f"{err}" + (f" ({kept} articles before it kept)" if kept else ""))
    for path in book_files:
        try:
            yield sources.read_book(path)
        except DataError as err:
            skips.add(path, str(err))
        except OSError as err:
            skips.add(path, f"unreadable ({err.strerror or err})")


def _batches(raws: Iterator[sources.RawDocument], limit: int | None) -> Iterator[list[sources.RawDocument]]:
    batch: list[sources.RawDocument] = []
    chars = 0
    for n, raw in enumerate(raws):
        if limit is not None and n >= limit:
            break
        batch.append(raw)
        chars += len(raw.text)
        if chars >= CLEAN_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _gather(refs: list[ray.ObjectRef], sizes: list[int], bar: tqdm) -> list[Any]:
    """Results in submission order, advancing ``bar`` by each task's size as it finishes."""
    size_of = dict(zip(refs, sizes, strict=True))
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        bar.update(size_of[done[0]])
    bar.close()
    return ray.get(refs)


def _ranges(weights: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous index ranges of roughly equal total weight."""
    if len(weights) == 0:
        return []
    cum = np.cumsum(weights)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(weights)]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _run(cfg: PipelineConfig, output: Path, clock: _Clock) -> Path:
    given_model = cfg.tokenizer.model_path  # checked before any reading: fail fast on a bad path
    model_proto = load_tokenizer_model(sources.resolve_path(given_model)) if given_model else None
    with atomic_directory(output) as tmp:
        spill_dir = tmp.resolve() / ".spill"  # absolute: workers need not share the driver's cwd
        spill_dir.mkdir()
        try:
            _stages(cfg, tmp, spill_dir, model_proto, clock)
        finally:
            shutil.rmtree(spill_dir)  # before the directory is published (or removed on error)
    clock.lap("write")
    return output


def _stages(
    cfg: PipelineConfig, tmp: Path, spill_dir: Path, model_proto: bytes | None, clock: _Clock
) -> None:
    """The stages; every intermediate result goes to ``spill_dir``, the driver keeps counts and
    per-document sizes (plus per-sample metadata: doc id, label, tokens, where its records are)."""
    bar = {"file": sys.stderr, "disable": not cfg.progress, "dynamic_ncols": True}
    workers = cfg.num_workers
    skips = _Skips(cfg.on_bad_input == "fail")

    # 1. read and clean: the driver streams raw pages, workers run mwparserfromhell + sentence split
    refs, sizes, clean_files = [], [], []
    with tqdm(desc="read", unit="doc", **bar) as read_bar:
        for batch in _batches(_raw_documents(cfg, skips), cfg.inputs.max_documents):
            clean_files.append(spill_dir / f"clean-{len(clean_files):06d}.bin")
            refs.append(_clean_task.remote(batch, cfg.inputs.min_sentence_chars, clean_files[-1]))
            sizes.append(len(batch))
            read_bar.update(len(batch))
            if len(refs) > 2 * workers:  # bound what is in flight; a dump is never whole in memory
                ray.wait(refs, num_returns=len(refs) - 2 * workers)
    cleaned = _gather(refs, sizes, tqdm(total=sum(sizes), desc="clean", unit="doc", **bar))
    sentences_per_file = [n for _, n in cleaned]
    if sum(d for d, _ in cleaned) == 0:
        raise DataError("no documents with text in any input (inputs.wiki / inputs.books)")
    clock.lap("read_clean")

    # 2. tokenizer: trained once on the driver (sentences read back from the spill), or loaded
    if model_proto is None:
        model_proto = train_tokenizer(
            spill.SpilledSentences(clean_files, sentences_per_file), cfg.tokenizer, cfg.seed
        )
    sp = processor(model_proto)
    special = special_tokens(sp)  # recorded in the manifest: readers never assume fixed ids
    clock.lap("tokenizer")

    # 3. encode sentences in the workers, then join their parts into one memory-mappable corpus
    model_ref = ray.put(model_proto)
    parts = _ranges(np.array(sentences_per_file), workers * TASKS_PER_WORKER)
    refs = [_encode_task.remote(model_ref, clean_files[a:b], spill_dir, i) for i, (a, b) in enumerate(parts)]
    encoded = _gather(
        refs, [sum(d for d, _ in cleaned[a:b]) for a, b in parts],
        tqdm(total=sum(d for d, _ in cleaned), desc="encode", unit="doc", **bar),
    )  # fmt: skip
    doc_tokens = np.concatenate(encoded)  # (D,) tokens per document: all the driver keeps of the corpus
    num_sentences = spill.join_corpus(spill_dir, len(parts))
    for path in clean_files:
        path.unlink()  # the text is no longer needed; only ids go on
    num_docs = len(doc_tokens)
    clock.lap("encode")

    # 4. pairs + masks; the random-B pool is a seeded sample of documents, the same for any split of work
    pool = np.arange(num_docs)
    if num_docs > cfg.pairs.random_doc_pool:
        pool = np.sort(
            np.random.default_rng([cfg.seed, 0xB]).choice(num_docs, cfg.pairs.random_doc_pool, False)
        )
    word_start = word_start_table(sp)
    parts = _ranges(doc_tokens, workers * TASKS_PER_WORKER)
    refs = [
        _samples_task.remote(
            spill_dir,
            a,
            b,
            pool,
            cfg.pairs,
            special,
            cfg.seed,
            word_start,
            spill_dir / f"records-{i:06d}.bin",
        )
        for i, (a, b) in enumerate(parts)
    ]
    produced = _gather(refs, [b - a for a, b in parts], tqdm(total=num_docs, desc="pairs", unit="doc", **bar))
    samples = SampleBatch.concatenate(produced)  # metadata only: the records stay in the spill files
    if len(samples) == 0:
        raise DataError(f"no sentence pairs could be built from {num_docs} documents (all too short?)")
    clock.lap("pairs")

    # 5. split by document, shuffle each split (seeded), cut into equal shards
    num_val = round(cfg.split.validation_fraction * num_docs)
    if cfg.split.validation_fraction > 0 and num_docs >= 2:
        num_val = min(max(num_val, 1), num_docs - 1)
    validation_docs = np.random.default_rng([cfg.seed, 0x5]).permutation(num_docs)[:num_val]
    in_validation = np.isin(samples.doc_ids, validation_docs)
    members = {"train": np.flatnonzero(~in_validation), "validation": np.flatnonzero(in_validation)}

    split_infos: dict[str, SplitInfo] = {}
    dropped: dict[str, int] = {}
    try:
        for index, split in enumerate(SPLITS):
            order = np.random.default_rng([cfg.seed, 0x51, index]).permutation(members[split])
            plans, dropped[split] = plan_shards(
                order, cfg.split.samples_per_shard, cfg.split.remainder, split
            )
            split_infos[split] = write_split(tmp, split, samples, plans, cfg.split.samples_per_shard)
    finally:
        samples.close()
    with atomic_write(tmp / tokenizer_filename(model_proto), "wb") as f:
        f.write(model_proto)
    manifest = Manifest(
        tokenizer_sha256=model_sha256(model_proto),
        vocab_size=special.vocab_size,
        max_seq_length=cfg.pairs.max_seq_length,
        dupe_factor=cfg.pairs.dupe_factor,
        splits=split_infos,
        config=to_dict(cfg),
        inputs={
            "documents": num_docs,
            "sentences": num_sentences,
            "tokens": int(doc_tokens.sum()),
            "pairs": len(samples),
            "random_next_fraction": float(samples.labels.mean()) if len(samples) else 0.0,
            "validation_documents": num_val,
        },
        skipped=skips.items,
        dropped_samples=dropped,
        tokenizer_file=tokenizer_filename(model_proto),
        special_tokens=special.ids,
        tokenizer_kind=tokenizer_kind(model_proto),
        reserved_ids=[list(r) for r in special.reserved],
    )
    write_manifest(tmp, manifest)
