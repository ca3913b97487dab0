"""The `data.` config section: which corpus, how it is split, packed and sharded."""

from __future__ import annotations

from dataclasses import dataclass

from workloads.errors import UserInputError
from workloads.schema import option

EMBEDDED_CORPUS = "python-stdlib"


@dataclass
class DataConfig:
    corpus: str = option(
        EMBEDDED_CORPUS,
        "file, directory or glob of .txt/.jsonl/.parquet files; 'python-stdlib' = this Python's own stdlib sources",
    )
    val_corpus: str = option("", "separate validation corpus (same forms); when set, all of corpus is train")
    val_fraction: float = option(0.05, "share of documents held out for validation (whole documents, by hash)")
    split_seed: int = option(1234, "seed of the train/validation document split")
    seq_len: int = option(256, "tokens per training sample (each stored sample holds seq_len+1 tokens)")
    max_doc_chars: int = option(20000, "text documents longer than this are cut at blank lines into pieces")
    text_field: str = option("text", "field holding the text in .jsonl lines and .parquet columns")
    dataset_dir: str = option("", "root of prepared datasets; empty = <run.output_dir>/datasets")
    shard_samples: int = option(8192, "samples per Arrow shard file")
    shuffle_seed: int = option(0, "seed of the global sample order used in training")

    def validate(self) -> None:
        """Raise UserInputError naming the first field whose value cannot work."""
        if not self.corpus:
            raise UserInputError("data.corpus: empty; give a file, directory, glob or 'python-stdlib'")
        if self.seq_len < 8:
            raise UserInputError(f"data.seq_len: {self.seq_len} is too short; use at least 8")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserInputError(f"data.val_fraction: {self.val_fraction} must lie strictly between 0 and 1")
        if self.max_doc_chars < 1:
            raise UserInputError(f"data.max_doc_chars: {self.max_doc_chars} must be at least 1")
        if self.shard_samples < 1:
            raise UserInputError(f"data.shard_samples: {self.shard_samples} must be at least 1")
        if not self.text_field:
            raise UserInputError("data.text_field: empty; name the field that holds the text")
        # numpy's SeedSequence, which both seeds feed, refuses negative entropy.
        for name in ("split_seed", "shuffle_seed"):
            if getattr(self, name) < 0:
                raise UserInputError(f"data.{name}: {getattr(self, name)} must be >= 0")
