"""The real pipeline (real Ray): shards decode to the contract, manifest is right, output is deterministic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from bertscale.data_pipeline.run import run_pipeline
from bertscale.data_pipeline.schema import SPECIAL_TOKENS, TOKENIZER_NAME, load_manifest, read_shard


def test_shards_decode_to_the_schema(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    special = manifest.special()
    CLS_ID, SEP_ID, PAD_ID, MASK_ID = special.cls_id, special.sep_id, special.pad_id, special.mask_id
    masked = 0
    mask_ids = 0
    labels = []
    for split in ("train", "validation"):
        paths = manifest.shard_paths(tiny_shards, split)
        assert paths, split
        keys = set()
        for path in paths:
            samples = list(read_shard(path, special=special))  # decode_sample validates every sample
            assert len(samples) == manifest.splits[split].samples_per_shard == 8
            for s in samples:
                assert s.key not in keys
                keys.add(s.key)
                assert 3 < s.num_tokens <= manifest.max_seq_length == 64
                assert s.input_ids.max() < manifest.vocab_size
                assert np.count_nonzero(np.isin(s.input_ids, [CLS_ID, SEP_ID])) == 3  # [CLS] A [SEP] B [SEP]
                assert not np.isin(s.input_ids, [PAD_ID, MASK_ID]).any()  # ids are unmasked, unpadded
                sep = int(np.flatnonzero(s.input_ids == SEP_ID)[0])
                assert s.input_ids[0] == CLS_ID and s.token_type_ids[: sep + 1].max() == 0
                assert s.token_type_ids[sep + 1 :].min() == 1
                assert s.masked_positions.shape[0] == manifest.dupe_factor == 2
                assert not special.is_special[s.input_ids[s.masked_positions]].any()
                masked += s.masked_positions.size
                mask_ids += np.count_nonzero(s.masked_ids == MASK_ID)
                labels.append(s.next_sentence_label)
    assert masked > 1000
    assert 0.7 < mask_ids / masked < 0.9
    assert 0.35 < np.mean(labels) < 0.65  # a few hundred pairs; the tight check is in test_instances


def test_manifest_describes_the_output(tiny_shards: Path) -> None:
    manifest = load_manifest(tiny_shards)
    model = (tiny_shards / TOKENIZER_NAME).read_bytes()
    assert manifest.tokenizer_sha256 == hashlib.sha256(model).hexdigest()
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert tuple(sp.id_to_piece(i) for i in range(5)) == SPECIAL_TOKENS
    assert sp.get_piece_size() == manifest.vocab_size == 600
    assert manifest.tokenizer_kind == "sentencepiece" and manifest.special_tokens == dict(
        zip(SPECIAL_TOKENS, range(5), strict=True)
    )
    assert manifest.reserved_ids == [[0, 5]]
    assert manifest.inputs["documents"] == 7  # 4 wiki articles + 3 books
    read = manifest.inputs["sources"]  # documents read per input
    assert {Path(p).name: n for p, n in read.items() if p.endswith("tiny_wiki.xml")} == {"tiny_wiki.xml": 4}
    assert sorted(Path(p).parent.name for p in read if p.endswith(".txt")) == ["books"] * 3
    assert manifest.skipped == []
    total = 0
    for name, split in manifest.splits.items():
        for shard in split.shards:
            path = tiny_shards / shard.name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
            assert shard.tokens == sum(s.num_tokens for s in read_shard(path))
        assert [s.name for s in split.shards] == [f"{name}-{i:06d}.tar" for i in range(len(split.shards))]
        total += split.samples + manifest.dropped_samples[name]
    assert total == manifest.inputs["pairs"] > 200
    assert manifest.config["pairs"]["max_seq_length"] == 64 and manifest.config["seed"] == 19
    files = sorted(p.name for p in tiny_shards.iterdir())
    assert not [f for f in files if f.endswith(".tmp") or f.startswith(".")]  # atomic: no leftovers


def test_one_worker_gives_byte_identical_shards(tiny_shards: Path, tiny_config, tmp_path: Path) -> None:
    """tiny_shards ran on 2 Ray workers; the same config on 1 worker must give the same bytes."""
    one = run_pipeline(tiny_config(tmp_path / "one", num_workers=1))
    two_manifest, one_manifest = load_manifest(tiny_shards), load_manifest(one)
    assert one_manifest.config["num_workers"] == 1 and two_manifest.config["num_workers"] == 2
    assert one_manifest.tokenizer_sha256 == two_manifest.tokenizer_sha256
    for split in ("train", "validation"):
        ones = [(s.name, s.sha256) for s in one_manifest.splits[split].shards]
        assert ones == [(s.name, s.sha256) for s in two_manifest.splits[split].shards]
        assert ones


@pytest.mark.integration
def test_tokenizer_sample_gathered_by_tasks_is_the_seeded_sample(tiny_config, tmp_path: Path) -> None:
    """With more sentences than tokenizer.input_sentence_size, tasks gather the sample from their
    clean files: the model equals one trained in memory on every sentence with the same cap and seed."""
    from bertscale.data_pipeline import sources
    from bertscale.data_pipeline.tokenizer import model_sha256, train_tokenizer

    cfg = tiny_config(tmp_path / "sampled", tokenizer__input_sentence_size=150)
    manifest = load_manifest(run_pipeline(cfg))
    assert manifest.inputs["sentences"] > 300  # so 150 is a real sample
    raws = [*sources.iter_wiki_pages(cfg.inputs.wiki[0])]
    raws += [sources.read_book(p) for p in sources.expand_inputs(cfg.inputs.books)[0]]
    sentences = [
        s for raw in raws for s in sources.clean_document(raw, cfg.inputs.min_sentence_chars).sentences
    ]
    assert manifest.tokenizer_sha256 == model_sha256(train_tokenizer(sentences, cfg.tokenizer, cfg.seed))
