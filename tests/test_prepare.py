"""Preparing a dataset end to end on a real local Ray, checked against an independent recount."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from orchestrator.prepare import dataset_hash, main, prepare_dataset, short_name
from workloads.data.config import DataConfig
from workloads.data.corpus import (
    SourceDigest,
    cut_document,
    decode_utf8,
    find_sources,
    read_corpus,
    split_train_val,
)
from workloads.data.loader import PackedDataset, load_manifest
from workloads.data.packing import pack
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer, TokenizerConfig

SEQ_LEN = 16
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega def class return import yield async await lambda None True False").split()
# Three invalid UTF-8 sequences: a lone FF, a lone FE, and C3 without its continuation byte.
INVALID_BYTES = b"before \xff middle \xfe after \xc3( end\n"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray of 2 CPUs for this module, unless one is already running in this process."""
    started_here = not ray.is_initialized()
    if started_here:
        # address="local": a fresh instance even when a `ray start` cluster runs on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    if started_here:
        ray.shutdown()


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


def read_stream(dataset: PackedDataset) -> np.ndarray:
    """The split's token stream back from its samples (which overlap by one token)."""
    tokens, _ = dataset.get(np.arange(dataset.num_samples))
    tokens = tokens.numpy()
    return np.concatenate([tokens[0], tokens[1:, 1:].reshape(-1)])


def documents_in(stream: np.ndarray, tokenizer: Tokenizer) -> list[str]:
    """Texts of the documents that end (with EOS) inside the stream; the first may start before it."""
    ends = np.flatnonzero(stream == tokenizer.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(stream[s:e]) for s, e in zip(starts, ends)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    documents = write_corpus(root / "corpus")
    data, tok = small_configs(root / "corpus")
    dataset_dir = prepare_dataset(data, tok, root / "datasets")
    return dataset_dir, documents, data, tok


def test_counts_match_an_independent_recount(prepared):
    dataset_dir, documents, _, _ = prepared
    manifest = load_manifest(dataset_dir)
    tokenizer = Tokenizer.load(dataset_dir / "tokenizer.model")
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert len(documents) == 40 + 8 + 8 + 1
    assert train["num_documents"] + val["num_documents"] == len(documents)
    expected_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(documents))  # + one EOS each
    assert train["num_tokens"] + val["num_tokens"] == expected_tokens
    assert train["num_bytes"] + val["num_bytes"] == sum(len(doc.encode("utf-8")) for doc in documents)
    for split in (train, val):
        assert split["num_samples"] == (split["num_tokens"] - 1) // SEQ_LEN
        assert split["dropped_tokens"] == split["num_tokens"] - (split["num_samples"] * SEQ_LEN + 1)
        assert sum(shard["num_samples"] for shard in split["shards"]) == split["num_samples"]
    assert len(train["shards"]) == -(-train["num_samples"] // 200)
    assert manifest["tokenizer"] == {
        "file": "tokenizer.model", "sha256": tokenizer.sha256, "vocab_size": 400, "eos_id": tokenizer.eos_id,
    }
    assert manifest["empty_documents_skipped"] == 1
    assert len(manifest["sources"]) == 40 + 1 + 1 + 1 + 1  # .md is not a source
    assert dataset_dir.name == f"corpus-{manifest['dataset_hash']}"


def test_invalid_utf8_is_replaced_and_counted(prepared):
    dataset_dir, documents, _, _ = prepared
    assert load_manifest(dataset_dir)["invalid_utf8_sequences"] == 3
    assert INVALID_BYTES.decode("utf-8", errors="replace") in documents
    tokenizer = Tokenizer.load(dataset_dir / "tokenizer.model")
    decoded = "".join(
        tokenizer.decode(read_stream(PackedDataset(dataset_dir, split))) for split in ("train", "val")
    )
    assert "before \ufffd middle \ufffd after \ufffd( end" in decoded


def test_splits_hold_whole_documents_in_order(prepared):
    dataset_dir, documents, _, _ = prepared
    tokenizer = Tokenizer.load(dataset_dir / "tokenizer.model")
    manifest = load_manifest(dataset_dir)
    texts = {}
    for split in ("train", "val"):
        texts[split] = documents_in(read_stream(PackedDataset(dataset_dir, split)), tokenizer)
        # Every document the stream holds whole is a whole input document; the
        # samples keep the corpus order.
        assert all(text in documents for text in texts[split])
        positions = [documents.index(text) for text in texts[split]]
        assert positions == sorted(positions)
        # Only the dropped tail can hide the split's last document.
        assert len(texts[split]) >= manifest["splits"][split]["num_documents"] - 1
    assert not set(texts["train"]) & set(texts["val"])
    assert set(texts["train"]) | set(texts["val"]) <= set(documents)
    assert manifest["splits"]["val"]["num_documents"] >= 1


def test_segments_restart_after_each_eos(prepared):
    dataset_dir, _, _, _ = prepared
    eos = load_manifest(dataset_dir)["tokenizer"]["eos_id"]
    tokens, segments = PackedDataset(dataset_dir, "train").get(np.arange(100))
    tokens, segments = tokens.numpy(), segments.numpy()
    # A token's segment counts the EOS tokens before it in its sample: EOS ends its own document.
    ends_before = np.concatenate([np.zeros((len(tokens), 1), int), np.cumsum(tokens == eos, axis=1)[:, :-1]], axis=1)
    np.testing.assert_array_equal(segments, ends_before)
    assert segments.max() >= 1


def test_rerun_is_a_no_op_and_says_so(prepared, capsys):
    dataset_dir, _, data, tok = prepared
    before = {p.name: p.stat().st_mtime_ns for p in dataset_dir.iterdir()}
    capsys.readouterr()
    assert prepare_dataset(data, tok, dataset_dir.parent) == dataset_dir
    assert capsys.readouterr().out == f"dataset already prepared: {dataset_dir} (nothing to do)\n"
    assert {p.name: p.stat().st_mtime_ns for p in dataset_dir.iterdir()} == before


def test_same_inputs_give_identical_files_in_another_root(prepared, tmp_path):
    dataset_dir, _, data, tok = prepared
    again = prepare_dataset(data, tok, tmp_path / "elsewhere")
    assert again.name == dataset_dir.name
    first, second = load_manifest(dataset_dir), load_manifest(again)
    assert first["tokenizer"]["sha256"] == second["tokenizer"]["sha256"]
    assert first["splits"] == second["splits"]  # includes every shard's sha256


def test_a_given_tokenizer_is_used_as_is(prepared, tmp_path):
    dataset_dir, _, data, _ = prepared
    tok = TokenizerConfig(model_path=str(dataset_dir / "tokenizer.model"), vocab_size=999)
    reused = prepare_dataset(data, tok, tmp_path)
    assert reused.name != dataset_dir.name  # the given model, not training settings, is in the hash
    # The given model is the one that was trained here, so the tokens are the same.
    assert load_manifest(reused)["splits"] == load_manifest(dataset_dir)["splits"]


def test_cli_takes_pretrain_recipes_and_overrides(prepared, capsys):
    dataset_dir, _, data, tok = prepared
    overrides = [f"--data.{k}={v}" for k, v in dataclasses.asdict(data).items()]
    overrides += [f"--tokenizer.{k}={v}" for k, v in dataclasses.asdict(tok).items()]
    overrides.append(f"--data.dataset_dir={dataset_dir.parent}")
    assert main(["--config", "tiny", *overrides]) == 0
    assert "dataset already prepared" in capsys.readouterr().out


def test_verify_rehashes_every_shard_and_names_a_bad_one(prepared, tmp_path, capsys):
    dataset_dir, _, data, tok = prepared
    shutil.copytree(dataset_dir, tmp_path / dataset_dir.name)
    args = [f"--data.{k}={v}" for k, v in dataclasses.asdict(data).items()]
    args += [f"--tokenizer.{k}={v}" for k, v in dataclasses.asdict(tok).items()]
    args += [f"--data.dataset_dir={tmp_path}", "--verify"]
    manifest = load_manifest(dataset_dir)
    shards = manifest["splits"]["train"]["shards"] + manifest["splits"]["val"]["shards"]
    assert main(["--config", "tiny", *args]) == 0
    assert f"verified the tokenizer and {len(shards)} shards" in capsys.readouterr().out
    shard = tmp_path / dataset_dir.name / shards[0]["file"]
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF  # a token in the middle, same size: only a checksum tells
    shard.write_bytes(bytes(content))
    assert main(["--config", "tiny", *args]) == 2
    assert capsys.readouterr().err.startswith(f"error: {shard}: sha256 ")


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["--config", "tiny", f"--data.corpus={missing}", f"--data.dataset_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == f"error: data.corpus: no such file or directory: {missing}\n"


def test_single_large_file_is_cut_into_documents(tmp_path):
    rng = random.Random(5)
    text = "\n\n".join(random_document(rng, i) for i in range(60))
    (tmp_path / "book.txt").write_text(text)
    data, tok = small_configs(tmp_path / "book.txt", max_doc_chars=1000)
    manifest = load_manifest(prepare_dataset(data, tok, tmp_path / "datasets"))
    pieces = cut_document(text, 1000)
    assert manifest["splits"]["train"]["num_documents"] + manifest["splits"]["val"]["num_documents"] == len(pieces)
    assert manifest["splits"]["train"]["num_bytes"] + manifest["splits"]["val"]["num_bytes"] == len(text.encode())


def test_separate_validation_corpus(tmp_path):
    rng = random.Random(7)
    (tmp_path / "train.txt").write_text("\n\n".join(random_document(rng, i) for i in range(30)))
    val_text = "\n\n".join(random_document(rng, 100 + i) for i in range(10))
    (tmp_path / "val.txt").write_text(val_text)
    data, tok = small_configs(tmp_path / "train.txt", val_corpus=str(tmp_path / "val.txt"))
    dataset_dir = prepare_dataset(data, tok, tmp_path / "datasets")
    manifest = load_manifest(dataset_dir)
    assert manifest["splits"]["val"]["num_bytes"] == len(val_text.encode())
    tokenizer = Tokenizer.load(dataset_dir / "tokenizer.model")
    decoded = tokenizer.decode(read_stream(PackedDataset(dataset_dir, "val")))
    assert val_text.startswith(decoded) and len(decoded) > len(val_text) / 2  # short of the dropped tail


def test_failure_leaves_no_dataset_behind(tmp_path):
    write_corpus(tmp_path / "corpus")
    # One validation document: too short for a sample, found after the train shards are written.
    data, tok = small_configs(tmp_path / "corpus", seq_len=500, val_fraction=0.001)
    with pytest.raises(UserInputError, match=r"^data\.seq_len: 500 .* the val split holds only"):
        prepare_dataset(data, tok, tmp_path / "datasets")
    # Only the record of the sources' digests is left: no dataset, no temporary directory, no lock.
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [".source-digests.json"]


def test_missing_corpus_is_named(tmp_path):
    data, tok = small_configs(tmp_path / "nope")
    with pytest.raises(UserInputError, match=f"^data.corpus: no such file or directory: {tmp_path / 'nope'}$"):
        prepare_dataset(data, tok, tmp_path / "datasets")
    data, tok = small_configs(tmp_path / "*.txt")
    with pytest.raises(UserInputError, match=r"^data.corpus: no such file or directory: .*glob matches nothing"):
        prepare_dataset(data, tok, tmp_path / "datasets")
    assert not (tmp_path / "datasets").exists()


def test_empty_corpus_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.jsonl").write_text('{"text": ""}\n\n')
    data, tok = small_configs(tmp_path)
    with pytest.raises(UserInputError, match=r"^data.corpus: all 2 files hold no text$"):
        prepare_dataset(data, tok, tmp_path / "datasets")


def test_directory_without_corpus_files_and_unknown_types_are_named(tmp_path):
    (tmp_path / "readme.md").write_text("hello")
    with pytest.raises(UserInputError, match=r"^data.corpus: no \.txt, \.jsonl or \.parquet files under"):
        find_sources(str(tmp_path))
    with pytest.raises(UserInputError, match=r"^data.corpus: unsupported file type '\.md': .*readme\.md"):
        find_sources(str(tmp_path / "readme.md"))


def test_bad_jsonl_lines_are_named_with_their_line_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(UserInputError, match=r"^data.corpus: .*x\.jsonl line 2: not valid JSON"):
        read_corpus(find_sources(str(path)), "text", 1000)
    path.write_text('{"text": "fine"}\n\n{"body": "no text field"}\n')
    with pytest.raises(UserInputError, match=r"x\.jsonl line 3: no 'text' field"):
        read_corpus(find_sources(str(path)), "text", 1000)


def test_embedded_corpus_is_the_stdlib_without_tests():
    sources = find_sources("python-stdlib")
    names = [str(s.path) for s in sources]
    assert len(sources) > 300 and names == sorted(names)
    assert any(name.endswith("/json/decoder.py") for name in names)
    assert not any(part in ("test", "tests", "idle_test", "site-packages") for s in sources for part in s.path.parts[-4:-1])


def test_cut_document_keeps_every_character():
    rng = random.Random(3)
    paragraphs = ["\n".join("x" * rng.randrange(0, 80) for _ in range(rng.randrange(1, 12))) for _ in range(50)]
    text = "".join(p + rng.choice(["\n\n", "\n \t\n", "\r\n\r\n", "\n\n\n"]) for p in paragraphs) + "y" * 5000
    for limit in (50, 300, 1000, 10**6):
        pieces = cut_document(text, limit)
        assert "".join(pieces) == text
        assert all(0 < len(piece) <= limit for piece in pieces)
    # Pieces end at blank lines when a whole paragraph fits.
    pieces = cut_document("a\n\nbb\n\nccc\n\n", 7)
    assert pieces == ["a\n\nbb\n\n", "ccc\n\n"]


def test_split_is_by_content_and_keeps_both_sides_non_empty():
    docs = [f"doc {i}" for i in range(200)]
    is_val = split_train_val(docs, 0.1, seed=1)
    assert 5 < is_val.sum() < 40
    # A document's side depends on its content, not on its neighbours.
    assert (split_train_val(docs[::-1], 0.1, seed=1) == is_val[::-1]).all()
    assert not (split_train_val(docs, 0.1, seed=2) == is_val).all()
    assert split_train_val(["a", "b"], 0.01, seed=0).tolist().count(True) == 1
    with pytest.raises(UserInputError, match="at least 2"):
        split_train_val(["only one"], 0.5, seed=0)


def test_invalid_sequences_are_counted_like_python_replaces_them():
    assert decode_utf8(b"ok \xef\xbf\xbd already a replacement char") == ("ok \ufffd already a replacement char", 0)
    assert decode_utf8(INVALID_BYTES)[1] == 3
    assert decode_utf8(b"\xe2\x82")[1] == 1  # truncated 3-byte sequence: one replacement


def test_packing_overlaps_samples_by_one_token():
    # Documents [5 6] [] [7 8 9 10] with EOS=1: stream 5 6 1 | 1 | 7 8 9 10 1
    packed = pack(np.array([5, 6, 7, 8, 9, 10], np.int32), np.array([2, 0, 4]), eos_id=1, seq_len=3)
    assert packed.tokens.tolist() == [[5, 6, 1, 1], [1, 7, 8, 9]]
    assert packed.segments.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1]]
    assert (packed.num_tokens, packed.dropped_tokens) == (9, 2)
    assert pack(np.array([5], np.int32), np.array([1]), 1, 3).num_samples == 0


def test_hash_covers_what_shapes_the_output():
    data, tok = DataConfig(), TokenizerConfig()
    sources = [SourceDigest("a.txt", "text", "0" * 64, 10)]
    key = dataset_hash(data, tok, sources, [], None, 1 << 20)
    assert dataset_hash(dataclasses.replace(data, dataset_dir="/elsewhere", shuffle_seed=9), tok, sources, [], None, 1 << 20) == key
    assert dataset_hash(dataclasses.replace(data, seq_len=128), tok, sources, [], None, 1 << 20) != key
    assert dataset_hash(data, dataclasses.replace(tok, vocab_size=1000), sources, [], None, 1 << 20) != key
    assert dataset_hash(data, tok, [SourceDigest("a.txt", "text", "1" * 64, 10)], [], None, 1 << 20) != key
    assert dataset_hash(data, tok, sources, [], b"model", 1 << 20) != key
    assert dataset_hash(data, tok, sources, [], None, 2 << 20) != key  # groups shape the packing
    assert short_name("python-stdlib") == "python-stdlib"
    assert short_name("/data/books/tiny shakespeare.txt") == "tiny-shakespeare"
    assert short_name("/data/web/*/part-*.jsonl") == "web"
