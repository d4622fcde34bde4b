"""The pipeline on Ray: schedules the stages of :mod:`bertscale.data_pipeline.stages`.

read → clean → tokenize → encode → pairs + masks → plan → shards + manifest. The only module
importing ray. No byte of the corpus passes through the driver: tasks read the inputs (one per
file, or per byte range of a multistream dump), spill every result to files and return counts;
the driver plans from those counts and writes the manifest. Each document's randomness comes
from (seed, doc_id) and samples are ordered by global index, so the output is byte-identical for
any ``num_workers``.

With a multi-node Ray cluster, ``output_dir`` must be on a filesystem every node mounts (NFS,
Lustre, ...): tasks write the spill files and the shards there. This is checked at start-up.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from bertscale.atomic import atomic_directory, atomic_write, prepare_output_dir
from bertscale.config import to_dict
from bertscale.data_pipeline import corpora, dedup, multistream, sources, spill, stages
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.data_pipeline.instances import SampleRecipe
from bertscale.data_pipeline.schema import SPLITS, Manifest, SplitInfo, is_dataset_file
from bertscale.data_pipeline.shards import write_manifest
from bertscale.data_pipeline.stages import Chunk, ReadUnit
from bertscale.data_pipeline.tokenizer import (
    load_tokenizer_model,
    model_sha256,
    processor,
    sample_indices,
    special_tokens,
    tokenizer_filename,
    tokenizer_kind,
    word_start_table,
)
from bertscale.errors import DataError

TASKS_PER_WORKER = 4  # ranges per worker per stage, so an uneven range does not idle the others
RANGE_BYTES = 64 << 20  # compressed bytes of a multistream dump per read task, at most
BOOK_TASK_BYTES = 8 << 20  # consecutive books read by one task, up to this many bytes


# --- Ray tasks (module level so workers import them by name) ----------------------------------


def _read_group(
    units: list[tuple[int, ReadUnit]], limit: int | None, min_chars: int, spill_dir: Path
) -> list[tuple[list[Chunk], str | None]]:
    return [stages.read_unit(unit, number, limit, min_chars, spill_dir) for number, unit in units]


_read_task = ray.remote(num_cpus=1)(_read_group).options(name="read_unit")
_clean_task = ray.remote(num_cpus=1)(stages.clean_batch).options(name="clean_batch")


@ray.remote(num_cpus=1)
def _read_dump_task(
    unit: ReadUnit, number: int, limit: int | None, min_chars: int, spill_dir: Path, in_flight: int
) -> list[tuple[list[Chunk], str | None]]:
    """A whole single-stream dump: this task parses the XML and streams batches of pages on to
    cleaning tasks (mwparserfromhell, the costly part), ``in_flight`` at a time."""
    refs: list[ray.ObjectRef] = []
    error = None
    try:
        for raws in stages.raw_batches(unit, limit):
            refs.append(_clean_task.remote(raws, min_chars, stages.clean_path(spill_dir, number, len(refs))))
            if len(refs) > in_flight:  # blocked here, this task lends its CPU to the cleaners
                ray.wait(refs, num_returns=len(refs) - in_flight)
    except DataError as err:
        error = str(err)
    return [(ray.get(refs), error)]


@ray.remote(num_cpus=1)
def _multistream_task(dump: str, index: Path, parts: int) -> tuple[list[ReadUnit], str | None]:
    """The read units of a multistream dump: byte ranges of whole streams, or the whole dump (and
    the reason) when its index does not match it."""
    try:
        offsets = multistream.stream_offsets(dump, index)
        header = multistream.dump_header(dump)
    except DataError as err:
        return [ReadUnit("wiki", dump)], str(err)
    size = Path(dump).stat().st_size
    parts = max(parts, -(-size // RANGE_BYTES))
    ranges = multistream.plan_ranges(offsets, size, parts)
    return [ReadUnit("wiki", dump, a, b, header) for a, b in ranges], None


_signature_task = ray.remote(num_cpus=1)(dedup.signatures).options(name="dedup_signatures")
_collision_task = ray.remote(num_cpus=1)(dedup.collisions).options(name="dedup_collisions")
_drop_task = ray.remote(num_cpus=1)(spill.drop_documents).options(name="drop_documents")
_grams_task = ray.remote(num_cpus=1)(dedup.file_ngrams).options(name="contamination_ngrams")
_overlap_task = ray.remote(num_cpus=1)(dedup.overlap).options(name="contamination_overlap")
_trim_task = ray.remote(num_cpus=1)(spill.trim_documents).options(name="trim_documents")
_sample_task = ray.remote(num_cpus=1)(stages.sample_sentences).options(name="sample_sentences")
_tokenizer_task = ray.remote(num_cpus=1)(stages.train_from_samples).options(name="train_tokenizer")
_encode_task = ray.remote(num_cpus=1)(stages.encode_files).options(name="encode_documents")
_join_task = ray.remote(num_cpus=1)(stages.join_corpus).options(name="join_corpus")
_samples_task = ray.remote(num_cpus=1)(stages.samples_part).options(name="build_samples")
_shards_task = ray.remote(num_cpus=1)(stages.write_shards).options(name="write_shards")


_plan_task = ray.remote(num_cpus=1)(stages.plan_splits).options(name="plan_splits")


@ray.remote(num_cpus=0)
def _sees_task(marker: str, token: str) -> str | None:
    """None if this node reads ``token`` from ``marker``, else what it found."""
    try:
        found = Path(marker).read_text()
    except OSError as err:
        return err.strerror or str(err)
    return None if found == token else "it holds another run's marker"


# --- driver ----------------------------------------------------------------------------------


def run_pipeline(cfg: PipelineConfig, timings: dict[str, float] | None = None) -> Path:
    """Build the dataset described by ``cfg``; returns the output directory.

    ``timings``, if given, receives the wall seconds of each stage (for benchmarks/pipeline.py):
    read_clean, dedup, tokenizer, encode, join, pairs, plan, shards, write (tokenizer file,
    manifest, publishing).
    """
    wiki, _ = sources.expand_inputs(cfg.inputs.wiki)
    books, _ = sources.expand_inputs(cfg.inputs.books)
    model_path = cfg.tokenizer.model_path
    output = prepare_output_dir(
        cfg.output_dir,
        key="output_dir",
        overwrite=cfg.overwrite,
        overwrite_hint="overwrite=true",
        inputs=[*wiki, *books, sources.resolve_path(model_path) if model_path else None],
    )
    started = _init_ray(cfg.num_workers)
    try:
        return _run(cfg, output, _Clock(timings if timings is not None else {}))
    finally:
        if started:
            ray.shutdown()


def _get(refs: Any) -> Any:
    """``ray.get``, with a task's DataError re-raised as itself (one line, not a remote traceback)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, DataError):
            raise DataError(str(err.cause)) from None
        raise


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


class _Stage:
    """What the stages share: the config, the spill directory, progress bars, skips."""

    def __init__(self, cfg: PipelineConfig, spill_dir: Path, clock: _Clock) -> None:
        self.cfg, self.spill_dir, self.clock = cfg, spill_dir, clock
        self.parts = cfg.num_workers * TASKS_PER_WORKER
        self.skips = _Skips(cfg.on_bad_input == "fail")
        self.read_from: dict[str, int] = {}  # raw documents read per input (recorded in the manifest)
        self._bar = {"file": sys.stderr, "disable": not cfg.progress, "dynamic_ncols": True}

    def gather(self, refs: list[ray.ObjectRef], sizes: list[int], desc: str, unit: str) -> list[Any]:
        """Results in submission order, advancing a progress bar by each task's size as it finishes."""
        bar = tqdm(total=sum(sizes), desc=desc, unit=unit, **self._bar)
        size_of = dict(zip(refs, sizes, strict=True))
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(size_of[done[0]])
        bar.close()
        return _get(refs)


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
    with atomic_directory(output, owned=is_dataset_file) as tmp:
        spill_dir = tmp.resolve() / ".spill"  # absolute: workers need not share the driver's cwd
        spill_dir.mkdir()
        try:
            check_shared(spill_dir, output)
            stage = _Stage(cfg, spill_dir, clock)
            chunks = read_stage(stage)
            clock.lap("read_clean")
            chunks, duplicates = dedup_stage(stage, chunks)
            contamination = contamination_stage(stage, chunks)
            clock.lap("dedup")
            model_proto = tokenize_stage(stage, chunks, model_proto)
            clock.lap("tokenizer")
            corpus = encode_stage(stage, chunks, model_proto)
            clock.lap("join")
            samples = pairs_stage(stage, corpus, model_proto)
            clock.lap("pairs")
            splits, dropped = shards_stage(stage, tmp, corpus["documents"], samples["parts"])
            clock.lap("shards")
            with atomic_write(tmp / tokenizer_filename(model_proto), "wb") as f:
                f.write(model_proto)
            special = special_tokens(processor(model_proto))  # readers never assume fixed ids
            manifest = Manifest(
                tokenizer_sha256=model_sha256(model_proto),
                vocab_size=special.vocab_size,
                max_seq_length=cfg.pairs.max_seq_length,
                dupe_factor=cfg.pairs.dupe_factor,
                splits=splits,
                config=to_dict(cfg),
                inputs={
                    "documents": corpus["documents"],
                    "sentences": corpus["sentences"],
                    "tokens": corpus["tokens"],
                    "pairs": samples["pairs"],
                    "random_next_fraction": samples["random_next"] / samples["pairs"],
                    "validation_documents": stages.num_validation(
                        corpus["documents"], cfg.split.validation_fraction
                    ),
                    "sources": stage.read_from,
                    **duplicates,
                    **contamination,
                },
                skipped=stage.skips.items,
                dropped_samples=dropped,
                tokenizer_file=tokenizer_filename(model_proto),
                special_tokens=special.ids,
                tokenizer_kind=tokenizer_kind(model_proto),
                reserved_ids=[list(r) for r in special.reserved],
            )
            write_manifest(tmp, manifest)
        finally:
            shutil.rmtree(spill_dir)  # before the directory is published (or removed on error)
    clock.lap("write")
    return output


def check_shared(directory: Path, output: Path) -> None:
    """Every Ray node that runs tasks must see ``directory`` (inside ``output``): one clear error if not."""
    marker, token = directory / f".visible-{uuid.uuid4().hex}", uuid.uuid4().hex
    marker.write_text(token)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    refs = [
        _sees_task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(marker), token)
        for n in nodes
    ]
    try:
        for node, problem in zip(nodes, _get(refs), strict=True):
            if problem is not None:
                raise DataError(
                    f"output_dir {output}: Ray node {node.get('NodeManagerAddress', node['NodeID'])} cannot see"
                    f" {directory} ({problem}); on a multi-node cluster output_dir must be on a filesystem"
                    " every node mounts (NFS, Lustre, ...)"
                )
    finally:
        marker.unlink()


# --- stage 1: read + clean (tasks read the inputs; the driver never touches their bytes) -----


def _read_units(stage: _Stage) -> list[ReadUnit]:
    """The inputs as read units, in input order: wiki files (multistream dumps as byte ranges), books,
    one-document-per-line files, R data packages, users' JSONL, Parquet and plain-text files."""
    inputs = stage.cfg.inputs
    wiki_files, missing_wiki = sources.expand_inputs(inputs.wiki)
    book_files, missing_books = sources.expand_inputs(inputs.books)
    line_files, missing_lines = sources.expand_inputs(inputs.line_documents)
    jsonl_files, missing_jsonl = sources.expand_inputs(inputs.jsonl)
    parquet_files, missing_parquet = sources.expand_inputs(inputs.parquet)
    text_files, missing_text = corpora.expand_text_inputs(inputs.text)
    missing = missing_wiki + missing_books + missing_lines + missing_jsonl + missing_parquet + missing_text
    for item in missing:
        stage.skips.add(item["path"], item["reason"])
    indexes = {path: multistream.index_path(path) for path in wiki_files}
    listed = {str(index) for index in indexes.values() if index is not None}
    wiki_files = [path for path in wiki_files if path not in listed]  # a glob may match the indexes too
    refs = {
        path: _multistream_task.remote(path, index, stage.parts)
        for path, index in indexes.items()
        if index is not None
    }
    units = []
    for path in wiki_files:
        if path not in refs:
            units.append(ReadUnit("wiki", path))
            continue
        ranges, problem = _get(refs[path])
        if problem is not None:
            if stage.skips.fail:
                raise DataError(problem)
            print(f"warning: {problem}; {path} is read as one stream", file=sys.stderr, flush=True)
        units.extend(ranges)
    units += [ReadUnit("book", path) for path in book_files]
    units += [ReadUnit("lines", path) for path in line_files]
    units += [ReadUnit("r", f"r://{spec}") for spec in inputs.r_datasets]
    units += [ReadUnit("jsonl", path, field=inputs.text_field) for path in jsonl_files]
    units += [ReadUnit("parquet", path, field=inputs.text_field) for path in parquet_files]
    return units + [ReadUnit("text", path) for path in text_files]


def _book_groups(units: list[tuple[int, ReadUnit]]) -> list[list[tuple[int, ReadUnit]]]:
    """Consecutive books, up to BOOK_TASK_BYTES per group (a task per small file would cost more
    than reading it)."""
    groups: list[list[tuple[int, ReadUnit]]] = []
    size = BOOK_TASK_BYTES
    for item in units:
        item_size = Path(item[1].path).stat().st_size if Path(item[1].path).is_file() else 0
        if size + item_size > BOOK_TASK_BYTES and (not groups or groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item_size
    return groups


def read_stage(stage: _Stage) -> list[Chunk]:
    """Read and clean every input in tasks → the clean spill files, in input order."""
    cfg = stage.cfg
    limit, min_chars = cfg.inputs.max_documents, cfg.inputs.min_sentence_chars
    units = list(enumerate(_read_units(stage)))
    jobs: list[tuple[list[tuple[int, ReadUnit]], ray.ObjectRef]] = []
    for number, unit in units:
        if unit.kind == "wiki" and unit.end is None:
            ref = _read_dump_task.remote(unit, number, limit, min_chars, stage.spill_dir, 2 * cfg.num_workers)
            jobs.append(([(number, unit)], ref))
        elif unit.kind == "wiki":
            jobs.append(
                ([(number, unit)], _read_task.remote([(number, unit)], limit, min_chars, stage.spill_dir))
            )
    for group in _book_groups([(n, u) for n, u in units if u.kind != "wiki"]):
        jobs.append((group, _read_task.remote(group, limit, min_chars, stage.spill_dir)))
    jobs.sort(key=lambda job: job[0][0][0])
    results = stage.gather([ref for _, ref in jobs], [len(group) for group, _ in jobs], "read", "file")
    chunks: list[Chunk] = []
    for (group, _), result in zip(jobs, results, strict=True):
        for (_, unit), (unit_chunks, error) in zip(group, result, strict=True):
            if error is not None:
                where = unit.path if unit.end is None else f"{unit.path} (bytes {unit.start}-{unit.end})"
                stage.skips.add(where, error)
            chunks.extend(unit_chunks)
            stage.read_from[unit.path] = stage.read_from.get(unit.path, 0) + sum(c.raws for c in unit_chunks)
    if limit is not None:
        chunks = _cap(chunks, limit)
    if sum(c.documents for c in chunks) == 0:
        raise DataError(
            "no documents with text in any input (inputs.wiki / books / line_documents / r_datasets / "
            "jsonl / parquet / text)"
        )
    return chunks


def _cap(chunks: list[Chunk], limit: int) -> list[Chunk]:
    """The chunks of the first ``limit`` raw documents in input order (the one crossing it trimmed)."""
    kept: list[Chunk] = []
    for chunk in chunks:
        left = limit - sum(c.raws for c in kept)
        if left <= 0:
            chunk.path.unlink()
        elif chunk.raws > left:
            documents, sentences = _get(_trim_task.remote(chunk.path, left))
            kept.append(Chunk(chunk.path, documents, sentences, left))
        else:
            kept.append(chunk)
    return kept


# --- stage 1b: deduplication and contamination report (both optional) ------------------------


def dedup_stage(stage: _Stage, chunks: list[Chunk]) -> tuple[list[Chunk], dict[str, int]]:
    """Drop exact and/or near-duplicate documents (a later one of a colliding pair) → the chunks
    rewritten without them, and the counts for the manifest."""
    cfg = stage.cfg.dedup
    if not (cfg.exact or cfg.near):
        return chunks, {}
    groups = _ranges(np.array([c.documents for c in chunks]), stage.parts)
    paths = [stage.spill_dir / f"signatures-{i:06d}.npz" for i in range(len(groups))]
    refs = [
        _signature_task.remote([c.path for c in chunks[a:b]], cfg, stage.cfg.seed, path)
        for (a, b), path in zip(groups, paths, strict=True)
    ]
    stage.gather(refs, [b - a for a, b in groups], "dedup", "file")
    bands, rows = dedup.lsh_bands(cfg)
    exact_ref = _collision_task.remote(paths, 0, 0, rows, True) if cfg.exact else None
    band_groups = _ranges(np.ones(bands), stage.parts) if cfg.near else []
    near_refs = [_collision_task.remote(paths, a, b, rows, False) for a, b in band_groups]
    exact = _get(exact_ref) if exact_ref is not None else np.zeros(0, np.int64)
    near = np.setdiff1d(np.concatenate([np.zeros(0, np.int64), *_get(near_refs)]), exact)
    drop = np.union1d(exact, near)
    starts = np.cumsum([0, *(c.documents for c in chunks)])
    bounds = np.searchsorted(drop, starts)
    refs, where = [], []
    for i, (chunk, a, b) in enumerate(zip(chunks, bounds[:-1], bounds[1:], strict=True)):
        if b > a:
            refs.append(_drop_task.remote(chunk.path, drop[a:b] - starts[i]))
            where.append(i)
    for i, (documents, sentences) in zip(where, _get(refs), strict=True):
        chunks[i] = Chunk(chunks[i].path, documents, sentences, chunks[i].raws)
    for path in paths:
        path.unlink()
    counts = {"exact_duplicates": len(exact)} if cfg.exact else {}
    return chunks, counts | ({"near_duplicates": len(near)} if cfg.near else {})


def contamination_stage(stage: _Stage, chunks: list[Chunk]) -> dict[str, Any]:
    """Word n-grams of each fine-tuning test file found in the (deduplicated) corpus, if asked for."""
    cfg = stage.cfg.dedup
    if not cfg.contamination:
        return {}
    files, missing = sources.expand_inputs(cfg.contamination)
    if missing:
        raise DataError(f"{missing[0]['path']}: contamination test file {missing[0]['reason']}")
    grams = _get([_grams_task.remote(path, cfg.contamination_ngram) for path in files])
    everything = np.unique(np.concatenate([np.zeros(0, np.uint64), *grams]))
    grams_ref = ray.put(everything)
    groups = _ranges(np.array([c.documents for c in chunks]), stage.parts)
    refs = [
        _overlap_task.remote([c.path for c in chunks[a:b]], grams_ref, cfg.contamination_ngram)
        for a, b in groups
    ]
    results = stage.gather(refs, [b - a for a, b in groups], "contamination", "file")
    found = np.unique(np.concatenate([np.zeros(0, np.uint64), *(f for f, _ in results)]))
    report = {
        path: {
            "ngrams": len(g),
            "found": int(np.isin(g, found).sum()),
            "fraction": float(np.isin(g, found).mean()) if len(g) else 0.0,
        }
        for path, g in zip(files, grams, strict=True)
    }
    return {
        "contamination": {
            "ngram": cfg.contamination_ngram,
            "documents": sum(d for _, d in results),
            "files": report,
        }
    }


# --- stage 2: tokenizer ---------------------------------------------------------------------


def tokenize_stage(stage: _Stage, chunks: list[Chunk], model_proto: bytes | None) -> bytes:
    """The given tokenizer, or one trained in a task on a bounded sample of the clean sentences:
    tasks gather the seeded sample (at most ``tokenizer.input_sentence_size`` sentences, corpus
    order kept) from their clean files; the driver holds only the sample's indices."""
    if model_proto is not None:
        return model_proto
    cfg = stage.cfg
    counts = np.array([c.sentences for c in chunks], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    keep = sample_indices(int(starts[-1]), cfg.tokenizer.input_sentence_size, cfg.seed)
    if keep is None:  # the whole corpus is the sample: the trainer reads the clean files themselves
        paths = [c.path for c in chunks]
        return _get(_tokenizer_task.remote(paths, counts.tolist(), cfg.tokenizer, cfg.seed))
    bounds = np.searchsorted(keep, starts)
    picks = [keep[a:b] - start for a, b, start in zip(bounds[:-1], bounds[1:], starts[:-1], strict=True)]
    groups = _ranges(np.diff(bounds), stage.parts)
    paths = [stage.spill_dir / f"sample-{i:06d}.bin" for i in range(len(groups))]
    refs = [
        _sample_task.remote(chunks[a:b], picks[a:b], path) for (a, b), path in zip(groups, paths, strict=True)
    ]
    sampled = stage.gather(refs, [b - a for a, b in groups], "sample", "file")
    model_proto = _get(_tokenizer_task.remote(paths, sampled, cfg.tokenizer, cfg.seed))
    for path in paths:
        path.unlink()
    return model_proto


# --- stage 3: encode --------------------------------------------------------------------------


def encode_stage(stage: _Stage, chunks: list[Chunk], model_proto: bytes) -> dict[str, Any]:
    """Encode the clean files in tasks, join their parts into one memory-mappable corpus (in a
    task) → counts, and the document ranges of the pairs stage (equal tokens each)."""
    model_ref = ray.put(model_proto)
    parts = _ranges(np.array([c.sentences for c in chunks]), stage.parts)
    refs = [
        _encode_task.remote(model_ref, [c.path for c in chunks[a:b]], stage.spill_dir, i)
        for i, (a, b) in enumerate(parts)
    ]
    sizes = [sum(c.documents for c in chunks[a:b]) for a, b in parts]
    stage.gather(refs, sizes, "encode", "doc")
    stage.clock.lap("encode")
    sentences, doc_ranges = _get(_join_task.remote(stage.spill_dir, len(parts), stage.parts))
    for chunk in chunks:
        chunk.path.unlink()  # the text is no longer needed; only ids go on
    corpus = spill.load_corpus(stage.spill_dir)  # memory-mapped: the driver reads two numbers
    documents, tokens = corpus.num_documents, int(corpus.sentence_offsets[-1]) if sentences else 0
    return {"documents": documents, "sentences": sentences, "tokens": tokens, "ranges": doc_ranges}


# --- stage 4: pairs + masks -------------------------------------------------------------------


def pairs_stage(stage: _Stage, corpus: dict[str, Any], model_proto: bytes) -> dict[str, int]:
    """Samples of each document range in tasks (records + metadata spilled) → counts."""
    cfg, num_docs = stage.cfg, corpus["documents"]
    # the random-B pool is a seeded sample of documents, the same for any split of work
    pool = np.arange(num_docs)
    if num_docs > cfg.pairs.random_doc_pool:
        pool = np.sort(
            np.random.default_rng([cfg.seed, 0xB]).choice(num_docs, cfg.pairs.random_doc_pool, False)
        )
    sp = processor(model_proto)
    special = special_tokens(sp)  # ids from the tokenizer: a published WordPiece has [CLS]=101
    recipe = ray.put(SampleRecipe(cfg.pairs, pool, special, cfg.seed, word_start_table(sp)))
    refs = [
        _samples_task.remote(stage.spill_dir, i, a, b, recipe) for i, (a, b) in enumerate(corpus["ranges"])
    ]
    produced = stage.gather(refs, [b - a for a, b in corpus["ranges"]], "pairs", "doc")
    pairs = sum(n for n, _ in produced)
    if pairs == 0:
        raise DataError(f"no sentence pairs could be built from {num_docs} documents (all too short?)")
    return {"pairs": pairs, "random_next": sum(r for _, r in produced), "parts": len(refs)}


# --- stage 5: plan + shards -------------------------------------------------------------------


def shards_stage(
    stage: _Stage, out_dir: Path, num_docs: int, parts: int
) -> tuple[dict[str, SplitInfo], dict[str, int]]:
    """Plan the splits and shards in a task, then write the shards in tasks, whole shards each."""
    cfg = stage.cfg
    plans = _get(_plan_task.remote(stage.spill_dir, parts, num_docs, cfg.split, cfg.seed))
    stage.clock.lap("plan")
    infos: dict[str, SplitInfo] = {}
    refs, sizes, owners = [], [], []
    for split in SPLITS:
        plan = plans[split]
        for a, b in _ranges(np.ones(plan.shards), stage.parts):
            refs.append(_shards_task.remote(stage.spill_dir, parts, out_dir, split, a, b, plan))
            sizes.append(b - a)
            owners.append(split)
    written = stage.gather(refs, sizes, "shards", "shard")
    for split in SPLITS:
        infos[split] = SplitInfo(samples_per_shard=cfg.split.samples_per_shard)
    for split, shard_infos in zip(owners, written, strict=True):
        infos[split].shards.extend(shard_infos)
    return infos, {split: plans[split].dropped for split in SPLITS}
