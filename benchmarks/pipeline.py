"""Data pipeline throughput: tokens/s vs raw SentencePiece encoding on the same cores, and scaling.

    python benchmarks/pipeline.py [--copies 3] [--workers 1 2]

Runs the real pipeline (real Ray, ``num_workers`` = W on a W-CPU local Ray) on the embedded demo
corpus (gensim's enwiki dump + Hamlet), repeated ``--copies`` times, and reports per W:

- pipeline tokens/s after text extraction: corpus tokens / (encode + pairs/masks + shard writing),
  i.e. everything from clean sentences to finished shards (what tokenization alone would cost);
- end-to-end tokens/s, adding the wikitext/book parsing stage;
- raw SentencePiece encoding tokens/s of the same sentences with the same model on W threads.

Ray start-up and tokenizer training (one-off, single-threaded; trained once here and reused)
are excluded. Ratio goal >= 0.5; 2-vs-1 worker scaling goal >= 1.7x.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bertscale.config import load_config
from data_pipeline.__main__ import DEMO_CONFIG
from data_pipeline.config import PipelineConfig
from data_pipeline.run import run_pipeline
from data_pipeline.schema import TOKENIZER_NAME, load_manifest
from data_pipeline.sources import clean_document, expand_inputs, iter_wiki_pages, read_book
from data_pipeline.tokenizer import processor

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


def sentences_of(wiki: list[str], books: list[str], min_chars: int) -> list[str]:
    raws = [r for path in wiki for r in iter_wiki_pages(path)] + [read_book(p) for p in books]
    return [s for raw in raws for s in clean_document(raw, min_chars).sentences]


def raw_encode_tokens_per_s(model: bytes, sentences: list[str], threads: int, repeats: int = 3) -> float:
    sp = processor(model)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        ids = sp.encode(sentences, out_type=int, num_threads=threads)
        best = max(best, sum(map(len, ids)) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, default=3, help="demo corpus repeats (more = steadier numbers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bertscale-bench-") as tmp:
        work = Path(tmp)
        wiki, books = corpus_copies(work, args.copies)

        # tokenizer: trained once (not timed), then reused by every timed run
        warm = load_config(PipelineConfig, DEMO_CONFIG, [f"output_dir={work / 'warm'}", "progress=false"])
        run_pipeline(warm)
        model_path = work / "warm" / TOKENIZER_NAME
        model = model_path.read_bytes()

        results = {}
        for w in args.workers:
            cfg = load_config(PipelineConfig, DEMO_CONFIG, [f"num_workers={w}", "progress=false"])
            cfg.output_dir, cfg.tokenizer.model_path = str(work / f"w{w}"), str(model_path)
            cfg.inputs.wiki, cfg.inputs.books = wiki, books
            timings: dict[str, float] = {}
            run_pipeline(cfg, timings)
            results[w] = (load_manifest(cfg.output_dir).inputs["tokens"], timings)

        sentences = sentences_of(wiki[:1], books[:1], warm.inputs.min_sentence_chars) * args.copies
        tokens = results[args.workers[0]][0]
        print(f"corpus: demo x{args.copies}, {tokens:,} tokens; host has {os.cpu_count()} CPUs")
        header = (
            "W",
            "encode",
            "pairs",
            "write",
            "parse",
            "pipeline tok/s",
            "end-to-end tok/s",
            "raw spm tok/s",
        )
        print("{:>2} {:>7} {:>7} {:>7} {:>7} {:>15} {:>17} {:>14}  ratio".format(*header))
        rates = {}
        for w, (tokens, t) in results.items():
            post = tokens / sum(t[k] for k in POST_PARSE)
            e2e = tokens / sum(t[k] for k in ("read_clean", *POST_PARSE))
            raw = raw_encode_tokens_per_s(model, sentences, w)
            rates[w] = (post, e2e)
            stages = " ".join(f"{t[k]:>6.2f}s" for k in (*POST_PARSE, "read_clean"))
            print(f"{w:>2} {stages} {post:>15,.0f} {e2e:>17,.0f} {raw:>14,.0f}  {post / raw:.2f}")
        if 1 in rates and 2 in rates:
            pipeline, end_to_end = (rates[2][i] / rates[1][i] for i in (0, 1))
            print(
                f"scaling 2 vs 1 worker: pipeline {pipeline:.2f}x, end-to-end {end_to_end:.2f}x (goal 1.7x)"
            )


if __name__ == "__main__":
    main()
