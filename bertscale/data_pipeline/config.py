"""PipelineConfig: one typed dataclass tree for ``python -m bertscale.data_pipeline --config X key=value``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bertscale.data_pipeline.schema import MAX_SEQ_LENGTH, SPECIAL_TOKENS
from bertscale.runtime.config import MlflowConfig


@dataclass
class InputsConfig:
    RANGES: ClassVar[dict[str, str]] = {"max_documents": "[1, inf)", "min_sentence_chars": "[0, inf)"}

    # Paths or globs; ``pkg://gensim/test/test_data/x.bz2`` resolves inside an installed package.
    wiki: list[str] = field(default_factory=list)  # pages-articles dumps, .xml or .xml.bz2
    books: list[str] = field(default_factory=list)  # UTF-8 .txt files, one book per file
    line_documents: list[str] = field(default_factory=list)  # UTF-8 text, one document per line
    r_datasets: list[str] = field(default_factory=list)  # PACKAGE[/NAME]: books in R data packages
    # users' own corpora (each file may be .gz/.bz2/.zst compressed; bad records skipped and counted)
    jsonl: list[str] = field(default_factory=list)  # JSON Lines, one document per line (text at text_field)
    parquet: list[str] = field(default_factory=list)  # Parquet, one document per row (text in text_field)
    text: list[str] = field(default_factory=list)  # plain-text files or directories, one document per file
    text_field: str = "text"  # the JSONL field / Parquet column holding a document's text
    max_documents: int | None = None  # cap (in input order) to keep demo runs small
    min_sentence_chars: int = 8  # shorter fragments (stray markup, headings) are dropped


@dataclass
class TokenizerConfig:
    # ids are stored as int32; SentencePiece needs room beyond the special tokens
    RANGES: ClassVar[dict[str, str]] = {
        "vocab_size": f"[{len(SPECIAL_TOKENS) + 3}, {2**31}]",
        "character_coverage": "(0, 1]",
        "input_sentence_size": "[1, inf)",
    }

    # use this tokenizer instead of training a SentencePiece one: a SentencePiece .model, a
    # tokenizer.json, or a HuggingFace tokenizer directory (tokenizer.json and/or WordPiece vocab.txt)
    model_path: str | None = None
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    input_sentence_size: int = 1_000_000  # sentences sampled (seeded) for training


@dataclass
class PairsConfig:
    RANGES: ClassVar[dict[str, str]] = {
        "max_seq_length": f"[8, {MAX_SEQ_LENGTH}]",  # what the shard dtypes hold
        "short_seq_prob": "[0, 1]",
        "dupe_factor": "[1, inf)",
        "masked_lm_prob": "(0, 1)",
        "max_predictions_per_seq": "[1, inf)",
        "random_doc_pool": "[1, inf)",
    }

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    dupe_factor: int = 5  # static mask draws per pair (rows of masked_positions)
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_masking: bool = False
    random_doc_pool: int = 100_000  # documents eligible as the source of a random B (seeded sample)


@dataclass
class SplitConfig:
    RANGES: ClassVar[dict[str, str]] = {"validation_fraction": "[0, 1)", "samples_per_shard": "[1, inf)"}

    validation_fraction: float = 0.05  # of documents (a document never straddles splits)
    samples_per_shard: int = 1000
    remainder: Literal["drop", "pad"] = "drop"  # the last partial shard: dropped, or padded by repeats


@dataclass
class DedupConfig:
    """Document-level deduplication (off by default: on the demo corpus it costs 12% of the wall
    time to drop 2% of the documents, see README) and the contamination report."""

    RANGES: ClassVar[dict[str, str]] = {
        "threshold": "(0, 1)",
        "num_perm": "[2, inf)",
        "shingle_words": "[1, inf)",
        "contamination_ngram": "[1, inf)",
    }

    exact: bool = False  # drop a document whose text equals an earlier one's
    near: bool = False  # drop a document that MinHash LSH finds similar to an earlier one
    threshold: float = 0.8  # Jaccard similarity of word shingles that counts as near-duplicate
    num_perm: int = 128  # MinHash permutations
    shingle_words: int = 5
    # fine-tuning test files (text, one example per line): report their n-grams found in the corpus
    contamination: list[str] = field(default_factory=list)
    contamination_ngram: int = 13


@dataclass
class PipelineConfig:
    RANGES: ClassVar[dict[str, str]] = {"num_workers": "[1, inf)", "seed": "[0, inf)"}

    inputs: InputsConfig = field(default_factory=InputsConfig)
    output_dir: str = "data/demo"
    overwrite: bool = False  # a non-empty output_dir: replace the dataset files in it (others are kept)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    num_workers: int = 2  # Ray tasks in flight per stage; results never depend on it
    seed: int = 12345
    on_bad_input: Literal["skip", "fail"] = "skip"
    progress: bool = True  # tqdm bars on stderr
    # The pipeline's own MLflow run (off unless enabled; default store: {output_dir}-pipeline-run/mlflow.db).
    mlflow: MlflowConfig = field(
        default_factory=lambda: MlflowConfig(enabled=False, experiment="bertscale-data")
    )

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
