"""Small mixed corpora for the prepare tests (.txt, .jsonl, .parquet, invalid UTF-8), and an independent reading."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from workloads.data.config import DataConfig
from workloads.tokenizer import TokenizerConfig

SEQ_LEN = 16


WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega def class return import yield async await lambda None True False"
).split()


# Three invalid UTF-8 sequences: a lone FF, a lone FE, and C3 without its continuation byte.
INVALID_BYTES = b"before \xff middle \xfe after \xc3( end\n"


def random_document(rng: random.Random, number: int) -> str:
    lines = [f"# document {number}"]
    for _ in range(rng.randrange(3, 40)):
        lines.append(" " * rng.choice([0, 4, 8]) + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 10))))
    return "\n".join(lines) + "\n"


def write_corpus(directory, seed=0) -> list[str]:
    """A mixed corpus (.txt files, one .jsonl, one .parquet, one file with invalid UTF-8).

    Returns its documents in the order prepare reads them (sorted paths).
    """
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (directory / f"a{i:02d}.txt").write_text(random_document(rng, i), encoding="utf-8")
    (directory / "a99-empty.txt").write_text("")  # skipped: nothing but an EOS
    records = [{"text": random_document(rng, 100 + i), "id": i} for i in range(8)]
    (directory / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pq.write_table(pa.table({"text": [random_document(rng, 200 + i) for i in range(8)]}), directory / "c.parquet")
    (directory / "a50-invalid.txt").write_bytes(INVALID_BYTES)
    (directory / "notes.md").write_text("not part of the corpus")
    return independent_read(directory)


def independent_read(directory) -> list[str]:
    """The corpus's documents, read without the code under test."""
    docs = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet")):
        if path.suffix == ".txt":
            docs.append(path.read_bytes().decode("utf-8", errors="replace"))
        elif path.suffix == ".jsonl":
            docs += [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        else:
            docs += pq.read_table(path).column("text").to_pylist()
    return [doc for doc in docs if doc]


def small_configs(corpus, **data_overrides) -> tuple[DataConfig, TokenizerConfig]:
    fields = {"corpus": str(corpus), "seq_len": SEQ_LEN, "val_fraction": 0.2, "shard_samples": 200}
    data = DataConfig(**{**fields, **data_overrides})
    return data, TokenizerConfig(vocab_size=400, train_max_chars=50_000)
