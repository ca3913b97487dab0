"""The tokenizer is byte-exact: any UTF-8 text round-trips and its bytes are counted exactly."""

from __future__ import annotations

import random

import numpy as np
import pytest

from workloads.errors import UserInputError
from workloads.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer, training_sample, training_sentences

WORDS = "the of and to in is that for it as with was on be by this are from or an".split()


def code_like_documents(count: int, seed: int) -> list[str]:
    """Python-looking text: indentation, newlines, words, some non-ASCII."""
    rng = random.Random(seed)
    docs = []
    for d in range(count):
        lines = [f"def function_{d}(x):"]
        for _ in range(rng.randrange(5, 30)):
            indent = " " * rng.choice([4, 8, 12])
            lines.append(indent + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 8))))
            if rng.random() < 0.2:
                lines.append("")
        lines.append(rng.choice(["    return x", "    # caf\u00e9 \u00fcber na\u00efve", "    pass"]))
        docs.append("\n".join(lines) + "\n")
    return docs


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    model = train_tokenizer(code_like_documents(200, seed=0), TokenizerConfig(vocab_size=400), seed=0)
    return Tokenizer(model)


TRICKY_TEXTS = [
    "",
    "hello world",
    "emoji \U0001f600\U0001f468\u200d\U0001f469\u200d\U0001f467 flags \U0001f1ef\U0001f1f5",
    "CJK \u4e2d\u6587\u6f22\u5b57 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "control " + "".join(chr(c) for c in range(32)) + "\x7f\x80\x9f",
    "tabs\tand\r\nwindows\rlines\n\n\n",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937 Zalgo z\u0351\u0352\u0357",
    "mixed \u0639\u0631\u0628\u064a \u05e2\u05d1\u05e8\u05d9\u05ea "
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u03b5\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "sentencepiece's own space mark \u2581 and \u2581\u2581 twice, at the end \u2581",
    "\u2581leading mark",
    "   leading and trailing spaces   ",
    "\ufeffbyte order mark, replacement \ufffd, max \U0010ffff, private \ue000",
    "        " * 50 + "deep indentation",
    "x" * 100_000,  # far beyond sentencepiece's training max_sentence_length
    "a very long line " * 5000,
]


@pytest.mark.parametrize("text", TRICKY_TEXTS, ids=range(len(TRICKY_TEXTS)))
def test_tricky_texts_round_trip_exactly(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))


def random_unicode(rng: random.Random, length: int) -> str:
    """Random Unicode scalar values from every plane (no surrogates: they have no UTF-8 form)."""
    chars = []
    for _ in range(length):
        kind = rng.random()
        if kind < 0.3:
            code = rng.randrange(0, 0x80)
        elif kind < 0.6:
            code = rng.randrange(0x80, 0x800)
        elif kind < 0.9:
            code = rng.choice([rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x10000)])
        else:
            code = rng.randrange(0x10000, 0x110000)
        chars.append(chr(code))
    return "".join(chars)


def test_random_unicode_round_trips_exactly(tokenizer):
    rng = random.Random(1)
    texts = [random_unicode(rng, rng.randrange(0, 200)) for _ in range(500)]
    lengths = tokenizer.token_byte_lengths()
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
        assert tokenizer.decode(ids) == text
        assert lengths[ids].sum() == len(text.encode("utf-8"))


def test_batch_encoding_equals_single_encoding(tokenizer):
    texts = code_like_documents(5, seed=9) + TRICKY_TEXTS[:10]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]
    arrays = tokenizer.encode_batch_arrays(texts)
    assert all(a.dtype == np.int32 for a in arrays)
    assert [a.tolist() for a in arrays] == [tokenizer.encode(t) for t in texts]


def test_token_byte_lengths_cover_the_vocabulary(tokenizer):
    lengths = tokenizer.token_byte_lengths()
    assert lengths.shape == (tokenizer.vocab_size,) and lengths.dtype == np.int64
    assert lengths[tokenizer.eos_id] == 0  # EOS adds nothing to decoded text
    assert tokenizer.vocab_size == 400
    assert (lengths[2:258] == 1).all()  # the 256 byte-fallback tokens


def test_newlines_and_indentation_are_learnt(tokenizer):
    pieces = [tokenizer._sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert any("\n" in piece for piece in pieces)  # newlines are inside training sentences
    assert "\u2581" * 8 in pieces  # an indentation run is a single token
    # Unseen text of the same kind compresses: fewer tokens than a third of its characters.
    text = "".join(code_like_documents(10, seed=123))
    assert len(tokenizer.encode(text)) < len(text) / 3


def test_training_is_deterministic_whatever_the_thread_count():
    docs = code_like_documents(60, seed=3)
    one = train_tokenizer(docs, TokenizerConfig(vocab_size=300), seed=5, num_threads=1)
    two = train_tokenizer(docs, TokenizerConfig(vocab_size=300), seed=5, num_threads=2)
    assert one == two


def test_training_sample_is_bounded_whole_and_reproducible():
    docs = [f"document {i} " * 50 for i in range(100)]
    sample = training_sample(docs, max_chars=2000, seed=0)
    assert sum(map(len, sample)) == 2000
    assert sample == training_sample(docs, max_chars=2000, seed=0)
    assert sample != training_sample(docs, max_chars=2000, seed=1)
    assert all(any(doc.startswith(piece) for doc in docs) for piece in sample)
    assert training_sample(docs[:3], max_chars=10_000, seed=0) == docs[:3]  # small corpus: all of it


def test_training_sentences_rejoin_to_the_text():
    text = "short line\n" * 1000 + "y" * 10_000 + "\nend"
    sentences = list(training_sentences([text]))
    assert "".join(sentences) == text
    assert max(map(len, sentences)) <= 4096
    assert sentences[0].endswith("\n")  # cut at line ends where there are some


def test_vocab_larger_than_the_corpus_allows_is_a_user_error():
    with pytest.raises(UserInputError, match=r"^tokenizer\.vocab_size: 5000 .*<="):
        train_tokenizer(["tiny corpus\n"] * 3, TokenizerConfig(vocab_size=5000), seed=0)


def test_a_file_that_is_no_model_is_a_user_error(tmp_path):
    path = tmp_path / "broken.model"
    path.write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserInputError, match="broken.model: not a sentencepiece model"):
        Tokenizer.load(path)


def test_load_reads_the_saved_model(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(tokenizer.model_bytes)
    loaded = Tokenizer.load(path)
    assert loaded.sha256 == tokenizer.sha256
    assert loaded.encode(TRICKY_TEXTS[2]) == tokenizer.encode(TRICKY_TEXTS[2])
