"""Preparing a dataset end to end on a real local Ray, checked against an independent recount."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from orchestrator.data.pretraining import dataset_hash, prepare_dataset, short_name
from tests.corpora import INVALID_BYTES, SEQ_LEN, random_document, small_configs, write_corpus
from workloads.data.config import DataConfig
from workloads.data.corpus import (
    SourceDigest,
    cut_document,
    find_sources,
    read_corpus,
)
from workloads.data.loader import PackedDataset, load_manifest
from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer, TokenizerConfig

# prepare runs its tasks on Ray: a local Ray for the session (tests.helpers.join_shared_ray)
pytestmark = pytest.mark.usefixtures("shared_ray")


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


def test_counts_match_an_independent_recount(mixed_corpus_dataset):
    dataset_dir, documents, _, _ = mixed_corpus_dataset
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
        "file": "tokenizer.model",
        "sha256": tokenizer.sha256,
        "vocab_size": 400,
        "eos_id": tokenizer.eos_id,
    }
    assert manifest["empty_documents_skipped"] == 1
    assert len(manifest["sources"]) == 40 + 1 + 1 + 1 + 1  # .md is not a source
    assert dataset_dir.name == f"corpus-{manifest['dataset_hash']}"


def test_invalid_utf8_is_replaced_and_counted(mixed_corpus_dataset):
    dataset_dir, documents, _, _ = mixed_corpus_dataset
    assert load_manifest(dataset_dir)["invalid_utf8_sequences"] == 3
    assert INVALID_BYTES.decode("utf-8", errors="replace") in documents
    tokenizer = Tokenizer.load(dataset_dir / "tokenizer.model")
    decoded = "".join(tokenizer.decode(read_stream(PackedDataset(dataset_dir, split))) for split in ("train", "val"))
    assert "before \ufffd middle \ufffd after \ufffd( end" in decoded


def test_splits_hold_whole_documents_in_order(mixed_corpus_dataset):
    dataset_dir, documents, _, _ = mixed_corpus_dataset
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


def test_segments_restart_after_each_eos(mixed_corpus_dataset):
    dataset_dir, _, _, _ = mixed_corpus_dataset
    eos = load_manifest(dataset_dir)["tokenizer"]["eos_id"]
    tokens, segments = PackedDataset(dataset_dir, "train").get(np.arange(100))
    tokens, segments = tokens.numpy(), segments.numpy()
    # A token's segment counts the EOS tokens before it in its sample: EOS ends its own document.
    ends_before = np.concatenate([np.zeros((len(tokens), 1), int), np.cumsum(tokens == eos, axis=1)[:, :-1]], axis=1)
    np.testing.assert_array_equal(segments, ends_before)
    assert segments.max() >= 1


def test_rerun_is_a_no_op_and_says_so(mixed_corpus_dataset, capsys):
    dataset_dir, _, data, tok = mixed_corpus_dataset
    before = {p.name: p.stat().st_mtime_ns for p in dataset_dir.iterdir()}
    capsys.readouterr()
    assert prepare_dataset(data, tok, dataset_dir.parent) == dataset_dir
    assert capsys.readouterr().out == f"dataset already prepared: {dataset_dir} (nothing to do)\n"
    assert {p.name: p.stat().st_mtime_ns for p in dataset_dir.iterdir()} == before


def test_same_inputs_give_identical_files_in_another_root(mixed_corpus_dataset, tmp_path):
    dataset_dir, _, data, tok = mixed_corpus_dataset
    again = prepare_dataset(data, tok, tmp_path / "elsewhere")
    assert again.name == dataset_dir.name
    first, second = load_manifest(dataset_dir), load_manifest(again)
    assert first["tokenizer"]["sha256"] == second["tokenizer"]["sha256"]
    assert first["splits"] == second["splits"]  # includes every shard's sha256


def test_a_given_tokenizer_is_used_as_is(mixed_corpus_dataset, tmp_path):
    dataset_dir, _, data, _ = mixed_corpus_dataset
    tok = TokenizerConfig(model_path=str(dataset_dir / "tokenizer.model"), vocab_size=999)
    reused = prepare_dataset(data, tok, tmp_path)
    assert reused.name != dataset_dir.name  # the given model, not training settings, is in the hash
    # The given model is the one that was trained here, so the tokens are the same.
    assert load_manifest(reused)["splits"] == load_manifest(dataset_dir)["splits"]


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


def test_hash_covers_what_shapes_the_output():
    data, tok = DataConfig(), TokenizerConfig()
    sources = [SourceDigest("a.txt", "text", "0" * 64, 10)]
    key = dataset_hash(data, tok, sources, [], None, 1 << 20)
    assert (
        dataset_hash(
            dataclasses.replace(data, dataset_dir="/elsewhere", shuffle_seed=9), tok, sources, [], None, 1 << 20
        )
        == key
    )
    assert dataset_hash(dataclasses.replace(data, seq_len=128), tok, sources, [], None, 1 << 20) != key
    assert dataset_hash(data, dataclasses.replace(tok, vocab_size=1000), sources, [], None, 1 << 20) != key
    assert dataset_hash(data, tok, [SourceDigest("a.txt", "text", "1" * 64, 10)], [], None, 1 << 20) != key
    assert dataset_hash(data, tok, sources, [], b"model", 1 << 20) != key
    assert dataset_hash(data, tok, sources, [], None, 2 << 20) != key  # groups shape the packing
    assert short_name("python-stdlib") == "python-stdlib"
    assert short_name("/data/books/tiny shakespeare.txt") == "tiny-shakespeare"
    assert short_name("/data/web/*/part-*.jsonl") == "web"
