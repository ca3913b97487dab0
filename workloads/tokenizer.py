"""A byte-exact sentencepiece BPE tokenizer: training, loading, encoding.

Exactness is the point: any UTF-8 text must come back unchanged from
encode -> decode, and `token_byte_lengths()[ids].sum()` must equal the text's
UTF-8 byte count, so that bits-per-byte computed from token losses is exact.
That takes byte fallback, identity normalization, no dummy prefix, no
whitespace collapsing, and one escape (see `_META`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from workloads.errors import UserInputError
from workloads.schema import option

# sentencepiece writes spaces as U+2581 internally and decodes every U+2581
# back to a space, so a literal U+2581 in the text would come back as " ".
# Such characters are encoded as their three UTF-8 byte-fallback tokens.
_META = "\u2581"

# Longest training "sentence" in characters. sentencepiece silently skips
# sentences over max_sentence_length *bytes*; 4 bytes per character at most.
_TRAIN_SENTENCE_CHARS = 4096
_MAX_SENTENCE_BYTES = 4 * _TRAIN_SENTENCE_CHARS

# Text that a tokenizer must round-trip exactly before it is used.
_EXACTNESS_PROBE = (
    "def f(x):\n\tif x:\r\n        return '\U0001f600 \u4e16\u754c e\u0301 \u2581\u2581 x'\n\n"
    + "".join(chr(c) for c in range(32))
    + "  trailing  \n"
)

_SENTENCEPIECE_CHECK_PREFIX = re.compile(r"^\w+: \S+\(\d+\) \[.*?\] ")

UNK_ID = 0
EOS_ID = 1


@dataclass
class TokenizerConfig:
    vocab_size: int = option(4096, "number of tokens, including 256 byte-fallback tokens, <unk> and </s>")
    model_path: str = option(
        "", "existing sentencepiece .model to reuse instead of training (vocab_size, train_max_chars then unused)"
    )
    train_max_chars: int = option(4_000_000, "train on a deterministic sample of at most this many characters")

    def validate(self) -> None:
        if self.model_path:
            if not Path(self.model_path).is_file():
                raise UserInputError(f"tokenizer.model_path: no such file: {self.model_path}")
            return
        # 256 byte tokens + <unk> + </s> leave nothing for merges below this.
        if self.vocab_size < 260:
            raise UserInputError(f"tokenizer.vocab_size: {self.vocab_size} is too small; use at least 260")
        if self.train_max_chars < 1000:
            raise UserInputError(f"tokenizer.train_max_chars: {self.train_max_chars} is too small; use at least 1000")


class Tokenizer:
    """A loaded sentencepiece model with exact encode/decode.

    Encoding is single-threaded unless `num_threads` says otherwise: the
    callers (Ray Data tasks) already run one tokenizer per CPU.
    """

    def __init__(self, model_bytes: bytes, num_threads: int = 1):
        self.model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, OSError) as e:
            raise UserInputError(f"not a sentencepiece model ({_first_line(e)})") from e
        self._num_threads = num_threads
        self._byte_lengths: np.ndarray | None = None
        # The three byte tokens that spell a literal U+2581 (see _META).
        self._meta_ids = np.array([self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META.encode("utf-8")], dtype=np.int32)

    @classmethod
    def load(cls, path: str | Path, num_threads: int = 1) -> Tokenizer:
        try:
            model_bytes = Path(path).read_bytes()
        except OSError as e:
            raise UserInputError(f"{path}: cannot read tokenizer model ({e.strerror})") from e
        try:
            return cls(model_bytes, num_threads)
        except UserInputError as e:
            raise UserInputError(f"{path}: {e}") from e

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model_bytes).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [ids.tolist() for ids in self.encode_batch_arrays(texts)]

    def encode_batch_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text as an int32 array (no per-token Python objects)."""
        encoded = self._sp.encode(list(texts), return_type="numpy", num_threads=self._num_threads)
        for i, text in enumerate(texts):
            if _META in text:
                encoded[i] = self._encode_with_literal_meta(text)
        return encoded

    def _encode_with_literal_meta(self, text: str) -> np.ndarray:
        parts = self._sp.encode(text.split(_META), return_type="numpy", num_threads=1)
        pieces = [parts[0]]
        for part in parts[1:]:
            pieces += [self._meta_ids, part]
        return np.concatenate(pieces).astype(np.int32, copy=False)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._sp.decode(np.asarray(ids, dtype=np.int64).tolist())

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each token adds to decoded text.

        Control and unknown tokens add 0, byte-fallback tokens 1, others the
        UTF-8 length of their piece with U+2581 read as a space.
        """
        if self._byte_lengths is None:
            lengths = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                if self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i):
                    continue
                if self._sp.is_byte(i):
                    lengths[i] = 1
                else:
                    lengths[i] = len(self._sp.id_to_piece(i).replace(_META, " ").encode("utf-8"))
            lengths.flags.writeable = False
            self._byte_lengths = lengths
        return self._byte_lengths

    def check_exact(self) -> None:
        """Raise UserInputError unless this model round-trips text byte-exactly."""
        ids = self.encode(_EXACTNESS_PROBE)
        exact = self.decode(ids) == _EXACTNESS_PROBE
        counts_bytes = int(self.token_byte_lengths()[ids].sum()) == len(_EXACTNESS_PROBE.encode("utf-8"))
        if not (exact and counts_bytes and self.eos_id >= 0):
            raise UserInputError(
                "tokenizer does not round-trip text exactly or has no </s>; it needs byte_fallback, "
                "identity normalization, no dummy prefix, no whitespace removal and an eos piece"
            )


def train_tokenizer(
    documents: Sequence[str], config: TokenizerConfig, seed: int, num_threads: int | None = None
) -> bytes:
    """Train a byte-exact BPE model on a sample of `documents`; return the model file's bytes."""
    sample = training_sample(documents, config.train_max_chars, seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(sample),
            model_writer=model,
            model_type="bpe",
            vocab_size=config.vocab_size,
            byte_fallback=True,  # any character outside the vocabulary becomes its UTF-8 bytes
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,  # indentation runs become single tokens
            max_sentence_length=_MAX_SENTENCE_BYTES,
            unk_id=UNK_ID,
            eos_id=EOS_ID,
            bos_id=-1,
            pad_id=-1,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserInputError(
            f"tokenizer.vocab_size: {config.vocab_size} does not suit this corpus ({_first_line(e)})"
        ) from e
    model_bytes = _without_thread_count(model.getvalue())
    Tokenizer(model_bytes).check_exact()
    return model_bytes


def training_sample(documents: Sequence[str], max_chars: int, seed: int) -> list[str]:
    """At most `max_chars` characters of whole documents, chosen at random but reproducibly.

    Documents are drawn in a seeded random order so that a big corpus is
    sampled throughout, then returned in corpus order; the last one drawn is
    cut to fit the budget.
    """
    if sum(map(len, documents)) <= max_chars:
        return list(documents)
    chosen: dict[int, str] = {}
    budget = max_chars
    for i in np.random.default_rng([seed]).permutation(len(documents)):
        if budget <= 0:
            break
        text = documents[i][:budget]
        chosen[int(i)] = text
        budget -= len(text)
    return [chosen[i] for i in sorted(chosen)]


def training_sentences(texts: Sequence[str]) -> Iterator[str]:
    """Cut texts into sentencepiece training "sentences" at line ends.

    Newlines stay inside the sentences, so pieces like "):\\n" are learnt;
    sentences are short enough that sentencepiece never skips one.
    """
    for text in texts:
        start = 0
        while len(text) - start > _TRAIN_SENTENCE_CHARS:
            cut = text.rfind("\n", start, start + _TRAIN_SENTENCE_CHARS) + 1
            if cut <= start:
                cut = start + _TRAIN_SENTENCE_CHARS  # one very long line: cut it anywhere
            yield text[start:cut]
            start = cut
        if start < len(text):
            yield text[start:]


def _without_thread_count(model_bytes: bytes) -> bytes:
    # The model file records the training thread count; dropping it makes the
    # file (and its sha256) the same on machines with different core counts.
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    # sentencepiece prefixes its checks with "INTERNAL: src/x.cc(744) [cond] ".
    return _SENTENCEPIECE_CHECK_PREFIX.sub("", lines[0])
