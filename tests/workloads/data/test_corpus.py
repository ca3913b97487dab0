"""Reading a corpus: the embedded corpus, documents cut whole, the split by content, invalid UTF-8."""

from __future__ import annotations

import random

import pytest

from workloads.data.corpus import (
    cut_document,
    decode_utf8,
    find_sources,
    split_train_val,
)
from workloads.errors import UserInputError

# Three invalid UTF-8 sequences: a lone FF, a lone FE, and C3 without its continuation byte.
INVALID_BYTES = b"before \xff middle \xfe after \xc3( end\n"


def test_embedded_corpus_is_the_stdlib_without_tests():
    sources = find_sources("python-stdlib")
    names = [str(s.path) for s in sources]
    assert len(sources) > 300 and names == sorted(names)
    assert any(name.endswith("/json/decoder.py") for name in names)
    assert not any(
        part in ("test", "tests", "idle_test", "site-packages") for s in sources for part in s.path.parts[-4:-1]
    )


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
