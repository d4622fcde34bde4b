"""Fill-mask probe of exported models: top-k completions of a few sentences, side by side.

    python benchmarks/fill_mask_probe.py HF_DIR [HF_DIR ...] [--top-k 5] [--sentence "... [MASK] ..."]

Each HF_DIR is a ``python -m bertscale.finetune.export --to-hf`` directory (or any transformers
masked-LM directory); the probe loads it the way a transformers user would
(``transformers.pipeline("fill-mask", model=HF_DIR)``) and prints one markdown table per model:
sentence -> the top-k tokens with their probabilities. ``[MASK]`` in a sentence is replaced by the
model's own mask token. What "sensible" means is left to the reader: real words that fit.
"""

from __future__ import annotations

import argparse

SENTENCES = (
    "The capital of France is [MASK].",
    "It was a [MASK] day.",
    "He [MASK] the door.",
    "She opened the [MASK] and looked outside.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a [MASK].",
    "Call me Ishmael. Some years ago I thought I would sail about a little and see the watery part "
    "of the [MASK].",
    "The ship sailed across the [MASK].",
    "The president of the United [MASK] spoke today.",
)


def probe(model_dir: str, sentences: list[str], top_k: int) -> list[tuple[str, list[tuple[str, float]]]]:
    import transformers

    fill = transformers.pipeline("fill-mask", model=model_dir, device="cpu")
    mask = fill.tokenizer.mask_token
    return [
        (s, [(r["token_str"].strip(), r["score"]) for r in fill(s.replace("[MASK]", mask), top_k=top_k)])
        for s in sentences
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="transformers directories (export --to-hf)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--sentence", action="append", help="a sentence with [MASK] (repeatable)")
    args = parser.parse_args(argv)
    sentences = args.sentence or list(SENTENCES)
    for model_dir in args.models:
        print(f"\n{model_dir}\n\n| sentence | top-{args.top_k} (probability) |\n|---|---|")
        for sentence, completions in probe(model_dir, sentences, args.top_k):
            short = sentence if len(sentence) <= 60 else "... " + sentence[-56:]
            print(f"| {short} | " + ", ".join(f"{tok} ({p:.2f})" for tok, p in completions) + " |")


if __name__ == "__main__":
    main()
