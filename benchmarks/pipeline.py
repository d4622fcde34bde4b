"""Data pipeline throughput: tokens/s vs raw SentencePiece encoding on the same cores, and scaling.

    python benchmarks/pipeline.py [--copies 3] [--workers 1 2] [--repeats 3]

Same text, same tokenizer model, same cores for both sides of every ratio. Two measurements:

1. HEADLINE - single core, CPU time (``time.process_time``): the stage functions the Ray tasks run
   (encode → pairs + masks → shard writing), in this process, against ``sp.encode`` of the same
   sentences on one thread. CPU time barely moves with other load on a shared host, so this ratio
   is the pipeline's intrinsic cost per token relative to tokenization. Best of ``--repeats``.
2. Wall clock - the real pipeline (real Ray, ``num_workers`` = W on a W-CPU local Ray), runs
   interleaved W = 1, 2, 1, 2, ... ``--repeats`` times, best run per W. Reported: post-parse
   tokens/s (encode + pairs/masks + write) vs raw SentencePiece on W threads, end-to-end tokens/s
   (adding wikitext/book parsing), and 2-vs-1 worker scaling of the CPU-bound parallel stages
   (encode + pairs/masks; the driver's shard writing is serial by design). Wall clock needs idle
   cores: the load average is printed with every run, so a poor figure on a busy host is visible
   as such.

Ray start-up and tokenizer training (one-off, single-threaded; trained once here and reused)
are excluded. Goals: ratio >= 0.5; 2-vs-1 worker scaling >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bertscale.config import load_config
from bertscale.data_pipeline.__main__ import DEMO_CONFIG
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.data_pipeline.instances import Corpus, SampleRecipe
from bertscale.data_pipeline.run import build_samples, encode_documents, run_pipeline
from bertscale.data_pipeline.schema import TOKENIZER_NAME, load_manifest
from bertscale.data_pipeline.shards import plan_shards, write_split
from bertscale.data_pipeline.sources import clean_document, expand_inputs, iter_wiki_pages, read_book
from bertscale.data_pipeline.tokenizer import processor, special_tokens, word_start_table

POST_PARSE = ("encode", "pairs", "write")


def corpus_copies(work: Path, copies: int) -> tuple[list[str], list[str]]:
    """The demo inputs linked ``copies`` times under distinct names (each copy is its own documents)."""
    demo = load_config(PipelineConfig, DEMO_CONFIG)
    wiki, books = [], []
    for kind, specs, out in (("wiki", demo.inputs.wiki, wiki), ("books", demo.inputs.books, books)):
        files, missing = expand_inputs(specs)
        if missing:
            raise SystemExit(f"demo corpus missing ({missing}); pip install 'bertscale[corpora]'")
        for c in range(copies):
            for f in files:
                link = work / kind / f"copy{c}-{Path(f).name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(f)
                out.append(str(link))
    return wiki, books


def documents_of(wiki: list[str], books: list[str], min_chars: int) -> list[list[str]]:
    raws = [r for path in wiki for r in iter_wiki_pages(path)] + [read_book(p) for p in books]
    return [d.sentences for d in (clean_document(raw, min_chars) for raw in raws) if d.sentences]


def encode_corpus(model: bytes, documents: list[list[str]]) -> Corpus:
    return Corpus.from_encoded(*encode_documents(model, documents))


def single_core_cpu(
    model: bytes, documents: list[list[str]], cfg: PipelineConfig, out: Path, repeats: int
) -> None:
    """CPU seconds of each post-parse stage on one core (best of ``repeats``), against raw SentencePiece."""
    sentences = [s for doc in documents for s in doc]
    sp = processor(model)
    cpu: dict[str, float] = {}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.process_time()
        result = fn(*args)
        cpu[stage] = min(cpu.get(stage, float("inf")), time.process_time() - start)
        return result

    special = special_tokens(sp)
    for r in range(repeats):
        raw_tokens = sum(
            map(len, timed("raw spm", partial(sp.encode, out_type=int, num_threads=1), sentences))
        )
        corpus = timed("encode", encode_corpus, model, documents)
        n = corpus.num_documents
        recipe = SampleRecipe(cfg.pairs, np.arange(n), special, cfg.seed, word_start_table(sp))
        batch = timed("pairs", build_samples, corpus, 0, n, recipe)
        plans, _ = plan_shards(np.arange(len(batch)), cfg.split.samples_per_shard, "drop", "train")
        timed("write", write_split, out / str(r), "train", batch, plans, cfg.split.samples_per_shard)
        assert len(corpus.tokens) == raw_tokens
    pipeline = sum(cpu[k] for k in POST_PARSE)
    stages = ", ".join(f"{k} {cpu[k]:.2f}s" for k in ("raw spm", *POST_PARSE))
    print(f"\nHEADLINE single core, CPU time (best of {repeats}) for {raw_tokens:,} tokens: {stages}")
    rates = f"pipeline {raw_tokens / pipeline:,.0f} tok/s vs raw spm {raw_tokens / cpu['raw spm']:,.0f} tok/s"
    print(f"  {rates}: ratio {cpu['raw spm'] / pipeline:.2f} (goal 0.5)")


def raw_encode_tokens_per_s(model: bytes, sentences: list[str], threads: int, repeats: int = 3) -> float:
    sp = processor(model)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        ids = sp.encode(sentences, out_type=int, num_threads=threads)
        best = max(best, sum(map(len, ids)) / (time.perf_counter() - start))
    return best


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="demo corpus repeats (more = steadier numbers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best one counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bertscale-bench-") as tmp:
        work = Path(tmp)
        wiki, books = corpus_copies(work, args.copies)

        # tokenizer: trained once (not timed), then reused by every timed run
        warm = load_config(PipelineConfig, DEMO_CONFIG, [f"output_dir={work / 'warm'}", "progress=false"])
        run_pipeline(warm)
        model_path = work / "warm" / TOKENIZER_NAME
        model = model_path.read_bytes()
        documents = documents_of(wiki[:1], books[:1], warm.inputs.min_sentence_chars) * args.copies
        sentences = [s for doc in documents for s in doc]
        print(f"corpus: demo x{args.copies}; host has {os.cpu_count()} CPUs, load average {load()} at start")

        best: dict[int, dict[str, float]] = {}
        tokens = 0
        for r in range(args.repeats):
            for w in args.workers:  # interleaved, so a burst of outside load hits every W alike
                cfg = load_config(PipelineConfig, DEMO_CONFIG, [f"num_workers={w}", "progress=false"])
                cfg.output_dir, cfg.tokenizer.model_path = str(work / f"w{w}-{r}"), str(model_path)
                cfg.inputs.wiki, cfg.inputs.books = wiki, books
                timings: dict[str, float] = {}
                run_pipeline(cfg, timings)
                tokens = load_manifest(cfg.output_dir).inputs["tokens"]
                timings["parallel"] = timings["encode"] + timings["pairs"]
                timings["post"] = sum(timings[k] for k in POST_PARSE)
                timings["e2e"] = timings["post"] + timings["read_clean"]
                stages = ", ".join(f"{k} {timings[k]:.2f}s" for k in ("read_clean", *POST_PARSE))
                print(f"  run {r + 1}/{args.repeats} W={w}: {stages}; load average {load()}")
                best[w] = {k: min(v, best.get(w, {}).get(k, float("inf"))) for k, v in timings.items()}

        print(
            f"\nwall clock, best of {args.repeats} per W (stage minima taken separately), {tokens:,} tokens:"
        )
        header = ("W", "encode", "pairs", "write", "parse", "pipeline tok/s", "end-to-end tok/s")
        print("{:>2} {:>7} {:>7} {:>7} {:>7} {:>15} {:>17}  raw spm tok/s  ratio".format(*header))
        for w, t in best.items():
            post, e2e = tokens / t["post"], tokens / t["e2e"]
            raw = raw_encode_tokens_per_s(model, sentences, w)
            stages = " ".join(f"{t[k]:>6.2f}s" for k in (*POST_PARSE, "read_clean"))
            print(f"{w:>2} {stages} {post:>15,.0f} {e2e:>17,.0f} {raw:>14,.0f}  {post / raw:.2f}")
        if 1 in best and 2 in best:
            parallel, post, e2e = (best[1][k] / best[2][k] for k in ("parallel", "post", "e2e"))
            print(
                f"scaling 2 vs 1 worker: CPU-bound stages (encode + pairs) {parallel:.2f}x (goal 1.7x); "
                f"post-parse incl. serial write {post:.2f}x, end-to-end {e2e:.2f}x"
            )
        print(f"load average after the wall-clock runs: {load()} on {os.cpu_count()} CPUs")

        single_core_cpu(model, documents, warm, work / "cpu", args.repeats)


if __name__ == "__main__":
    main()
