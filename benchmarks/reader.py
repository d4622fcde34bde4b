"""Input-path throughput: samples/s per core of reading + masking + collation, against the ceiling.

    python benchmarks/reader.py [--shards 8] [--per-shard 2000] [--seq 128] [--repeats 3]

Writes BERT-shaped shards (pairs of up to ``--seq`` tokens, vocab 30522, 5 static draws) to a
temporary directory, then measures in CPU time of this one process (so the figure is per core
whatever else runs on the machine), best of ``--repeats``:
  raw        read the shard files' bytes (what any reader must do: the ceiling)
  np.load    schema.read_shard: tar members one by one, one np.load per array (the previous reader)
  static     PretrainBatches.read: whole-shard parse + checks, the pipeline's draw, padded batch
  dynamic    the same with batch masking drawn from one generator per (seed, step, micro batch)
and how many cores one GPU at 3,000 sequences/s would need for each. Prints the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from bertscale.data_pipeline.schema import (
    MANIFEST_NAME,
    Manifest,
    Sample,
    ShardInfo,
    SplitInfo,
    encode_sample,
    read_shard,
    shard_name,
)
from bertscale.data_pipeline.tokenizer import trained_special
from bertscale.pretrain.data import PretrainBatches

VOCAB = 30522
SPECIAL = trained_special(VOCAB)  # the pipeline's SentencePiece layout: synthetic ids, only their shape matters
GPU_SEQUENCES_PER_S = 3000


def write_shards(root: Path, shards: int, per_shard: int, seq: int, dupe: int = 5) -> Path:
    rng = np.random.default_rng(0)
    infos = []
    for index in range(shards):
        path = root / shard_name("train", index)
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                n = int(rng.integers(seq // 2, seq - 3 + 1))
                a = int(rng.integers(1, n))
                body = rng.integers(len(SPECIAL.ids), VOCAB, size=n)
                cls, sep = SPECIAL.cls_id, SPECIAL.sep_id
                ids = np.concatenate([[cls], body[:a], [sep], body[a:], [sep]]).astype(np.int32)
                types = np.concatenate([np.zeros(a + 2), np.ones(n - a + 1)]).astype(np.uint8)
                m = max(1, round(0.15 * n))
                positions = np.stack(
                    [np.sort(rng.choice(np.arange(1, n + 2), m, replace=False)) for _ in range(dupe)]
                )
                sample = Sample(f"train{index:03d}_{i:06d}", ids, types, positions.astype(np.int16),
                                ids[positions].astype(np.int32), int(rng.integers(0, 2)))  # fmt: skip
                for suffix, blob in encode_sample(sample).items():
                    info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        infos.append(ShardInfo(path.name, per_shard, 0, hashlib.sha256(path.read_bytes()).hexdigest()))
    manifest = Manifest("bench", VOCAB, seq, dupe, {"train": SplitInfo(per_shard, infos)})
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root


def cpu_rate(fn, samples: int, repeats: int) -> float:
    """Samples per CPU-second of this process, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return samples / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=2000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    total = args.shards * args.per_shard
    steps = total // args.micro_batch
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shards(Path(tmp), args.shards, args.per_shard, args.seq)
        paths = sorted(root.glob("train-*.tar"))
        megabytes = sum(p.stat().st_size for p in paths) / 2**20

        def raw() -> None:
            for p in paths:
                np.frombuffer(p.read_bytes(), dtype=np.uint8).sum()  # touch every byte once

        def np_load() -> None:
            for p in paths:
                for _ in read_shard(p):
                    pass

        def reader(masking: str):
            def run() -> None:
                batches = PretrainBatches(root, "train", micro_batch_size=args.micro_batch, masking=masking)
                for step in range(steps):
                    batches.read(step, 0)

            return run

        rates = {
            "raw bytes (ceiling)": cpu_rate(raw, total, args.repeats),
            "np.load per member (before)": cpu_rate(np_load, total, 1),
            "static masking": cpu_rate(reader("static"), steps * args.micro_batch, args.repeats),
            "dynamic masking": cpu_rate(reader("dynamic"), steps * args.micro_batch, args.repeats),
        }
    print(f"{total} samples of <= {args.seq} tokens in {args.shards} shards ({megabytes:.0f} MiB), "
          f"micro batch {args.micro_batch}, CPU time of one process")  # fmt: skip
    print(f"{'path':<30} {'samples/s per core':>20} {'cores for 3,000 seq/s':>22}")
    for name, rate in rates.items():
        print(f"{name:<30} {rate:>20,.0f} {GPU_SEQUENCES_PER_S / rate:>22.2f}")
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
