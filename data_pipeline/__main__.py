"""``python -m data_pipeline --config X [key=value ...]`` (no --config: the embedded demo corpus)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from bertscale.config import load_config, split_cli
from bertscale.errors import run_cli
from data_pipeline.config import PipelineConfig

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: Sequence[str]) -> None:
    path, overrides = split_cli(argv)
    cfg = load_config(PipelineConfig, path or DEMO_CONFIG, overrides)
    from data_pipeline.run import run_pipeline  # ray is imported only once the config is valid
    from data_pipeline.schema import load_manifest

    output = run_pipeline(cfg)
    manifest = load_manifest(output)
    counts = ", ".join(
        f"{name}: {s.samples} samples in {len(s.shards)} shards" for name, s in manifest.splits.items()
    )
    print(f"wrote {output} ({counts}; vocab {manifest.vocab_size}; {len(manifest.skipped)} inputs skipped)")


def cli() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
