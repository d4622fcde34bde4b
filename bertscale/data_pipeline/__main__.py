"""Build pretraining shards: ``python -m bertscale.data_pipeline [--config X.yaml] [key=value ...]``.

Without --config the embedded demo corpus is used (bertscale/data_pipeline/configs/demo.yaml: gensim's
enwiki test dump + Hamlet). Overrides use dotted keys, e.g. ``pairs.max_seq_length=512
num_workers=8 output_dir=/data/wiki512``. Under ``ray job submit`` (RAY_ADDRESS set) the job
joins the cluster; otherwise a local Ray with ``num_workers`` CPUs is started.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bertscale.config import load_config, split_cli
from bertscale.data_pipeline.config import PipelineConfig
from bertscale.errors import run_cli

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: Sequence[str]) -> None:
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        print(f"\nDefaults and every key: {DEMO_CONFIG} and data_pipeline/config.py")
        return
    path, overrides = split_cli(argv)
    cfg = load_config(PipelineConfig, path or DEMO_CONFIG, overrides)
    from bertscale.data_pipeline.run import run_pipeline  # ray is imported only once the config is valid
    from bertscale.data_pipeline.schema import load_manifest
    from bertscale.data_pipeline.tracking import track_pipeline

    timings: dict[str, float] = {}
    started = time.perf_counter()
    output = run_pipeline(cfg, timings)
    track_pipeline(cfg, output, timings, time.perf_counter() - started)
    manifest = load_manifest(output)
    counts = ", ".join(
        f"{name}: {s.samples} samples in {len(s.shards)} shards" for name, s in manifest.splits.items()
    )
    print(f"wrote {output} ({counts}; vocab {manifest.vocab_size}; {len(manifest.skipped)} inputs skipped)")


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
