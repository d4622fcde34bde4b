"""Small synthetic WebDataset shards that follow bertscale.data_pipeline.schema (its encoder, names, manifest)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from bertscale.data_pipeline.schema import (
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    Sample,
    ShardInfo,
    SplitInfo,
    encode_sample,
    shard_name,
)
from bertscale.data_pipeline.tokenizer import trained_special

VOCAB_SIZE = 96
SPECIAL = trained_special(VOCAB_SIZE)  # the manifest records the trained SentencePiece layout (ids 0-4)
CLS_ID, SEP_ID, MASK_ID, NUM_SPECIAL_TOKENS = SPECIAL.cls_id, SPECIAL.sep_id, SPECIAL.mask_id, 5


def make_sample(rng: np.random.Generator, key: str, max_len: int = 32, dupe: int = 2) -> Sample:
    """A pair whose B half repeats A shifted by one id when label 0, so MLM and NSP are learnable."""
    n = int(rng.integers(4, (max_len - 3) // 2 + 1))
    a = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE - 1, size=n)
    label = int(rng.integers(0, 2))
    b = a + 1 if label == 0 else rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, size=n)
    ids = np.concatenate([[CLS_ID], a, [SEP_ID], b, [SEP_ID]]).astype(np.int32)
    types = np.concatenate([np.zeros(n + 2), np.ones(n + 1)]).astype(np.uint8)
    candidates = np.array([i for i in range(len(ids)) if ids[i] not in (CLS_ID, SEP_ID)])
    m = max(1, round(0.15 * len(candidates)))
    positions = np.stack([np.sort(rng.choice(candidates, m, replace=False)) for _ in range(dupe)])
    return Sample(
        key=key,
        input_ids=ids,
        token_type_ids=types,
        masked_positions=positions.astype(np.int16),
        masked_ids=np.full(positions.shape, MASK_ID, dtype=np.int32),
        next_sentence_label=label,
    )


def write_shards(
    root: Path, shards: dict[str, int] | None = None, per_shard: int = 16, seed: int = 0
) -> Path:
    """Write ``{split: n_shards}`` shards of ``per_shard`` samples plus manifest and a tokenizer file."""
    shards = shards or {"train": 4, "validation": 1}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / TOKENIZER_NAME).write_bytes(b"test tokenizer")
    splits = {}
    for split, count in shards.items():
        infos = []
        for index in range(count):
            path = root / shard_name(split, index)
            tokens = 0
            with tarfile.open(path, "w") as tar:
                for i in range(per_shard):
                    sample = make_sample(rng, f"{split}{index:03d}_{i:05d}")
                    tokens += sample.num_tokens
                    for suffix, data in encode_sample(sample).items():
                        info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            infos.append(
                ShardInfo(path.name, per_shard, tokens, hashlib.sha256(path.read_bytes()).hexdigest())
            )
        splits[split] = SplitInfo(samples_per_shard=per_shard, shards=infos)
    manifest = Manifest(
        tokenizer_sha256=hashlib.sha256(b"test tokenizer").hexdigest(),
        vocab_size=VOCAB_SIZE,
        max_seq_length=32,
        dupe_factor=2,
        splits=splits,
    )
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    return root
