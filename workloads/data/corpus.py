"""Reading a corpus (files, a directory, a glob, or the embedded one) into documents.

A document is one piece of text that goes whole into either the train or the
validation split: a text file (cut at blank lines when long), a .jsonl line,
or a .parquet row. Bytes that are not UTF-8 become U+FFFD and are counted.

A big file is read in pieces (`Piece`) that tasks on different machines can
read independently: byte ranges of a text or .jsonl file whose ends each
reader moves to the same place (the end of the next blank line, or the next
line), and runs of row groups of a .parquet file.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.data.config import EMBEDDED_CORPUS
from workloads.errors import UserInputError

_FORMAT_BY_SUFFIX = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
_SUPPORTED = ".txt, .jsonl or .parquet"
# Directories of the embedded corpus that are left out: third-party code and tests.
_EMBEDDED_EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test"}
# A run of blank (whitespace-only) lines; a paragraph ends right after one.
_BLANK_LINES = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")
_TEXT_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)


@dataclass(frozen=True)
class SourceFile:
    path: Path
    format: str  # "text", "jsonl" or "parquet"


@dataclass(frozen=True)
class SourceDigest:
    path: str
    format: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Piece:
    """Part of one source file: text/jsonl bytes [start, stop) (each end moved forward to the
    next blank line / line start, except 0 and the file's size), or parquet row groups [start, stop)."""

    path: str
    format: str
    start: int
    stop: int
    size: int  # bytes of the whole file
    bytes: int  # this piece's share of the file's bytes (nominal, for progress)

    @property
    def whole_file(self) -> bool:
        return self.format != "parquet" and self.start == 0 and self.stop >= self.size


@dataclass
class Corpus:
    documents: list[str]  # non-empty texts, in source order
    num_bytes: int  # UTF-8 bytes of all documents
    invalid_utf8_sequences: int  # replaced by U+FFFD while decoding
    empty_documents_skipped: int  # empty files, lines and rows: they would add nothing but an EOS


def find_sources(spec: str, field: str = "data.corpus") -> list[SourceFile]:
    """The files a corpus spec names, in a deterministic (sorted) order."""
    if spec == EMBEDDED_CORPUS:
        return _embedded_sources()
    expanded = os.path.expanduser(spec)
    if glob.has_magic(expanded):
        matches = sorted(glob.glob(expanded, recursive=True))
        if not matches:
            raise UserInputError(f"{field}: no such file or directory: {spec} (the glob matches nothing)")
        files: list[Path] = []
        for match in matches:
            path = Path(match)
            files += _files_under(path, field) if path.is_dir() else [path]
        return [_source(path, field) for path in files]
    path = Path(expanded)
    if path.is_dir():
        return [_source(p, field) for p in _files_under(path, field)]
    if path.is_file():
        return [_source(path, field)]
    raise UserInputError(f"{field}: no such file or directory: {spec}")


def digest_sources(sources: Sequence[SourceFile], field: str = "data.corpus") -> list[SourceDigest]:
    """sha256 and size of each source file; they address the prepared dataset."""
    return [digest_source(source, field) for source in sources]


def digest_source(source: SourceFile, field: str = "data.corpus") -> SourceDigest:
    sha = hashlib.sha256()
    size = 0
    try:
        with open(source.path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise UserInputError(f"{field}: cannot read {source.path} ({e.strerror})") from e
    return SourceDigest(str(source.path), source.format, sha.hexdigest(), size)


def read_corpus(
    sources: Sequence[SourceFile], text_field: str, max_doc_chars: int, field: str = "data.corpus"
) -> Corpus:
    """All documents of the sources, in order; text files are cut to about max_doc_chars."""
    pieces = [whole_file_piece(source, field) for source in sources]
    documents, invalid, empty = read_pieces(pieces, text_field, max_doc_chars, field)
    check_document_count(len(documents), sources, field)
    num_bytes = sum(len(text.encode("utf-8")) for text in documents)
    return Corpus(documents, num_bytes, invalid, empty)


def read_pieces(pieces: Sequence[Piece], text_field: str, max_doc_chars: int, field: str) -> tuple[list[str], int, int]:
    """(non-empty documents in order, invalid UTF-8 sequences, empty documents skipped)."""
    documents: list[str] = []
    invalid = empty = 0
    for piece in pieces:
        texts, bad = read_piece(piece, text_field, max_doc_chars, field)
        invalid += bad
        for text in texts:
            if text:
                documents.append(text)
            else:
                empty += 1
    return documents, invalid, empty


def check_document_count(
    num_documents: int, sources: Sequence[SourceFile] = (), field: str = "data.corpus", need: int = 1
) -> None:
    """One line for a corpus without text, or with too few documents to hold out validation (need=2)."""
    if num_documents == 0 and sources:
        where = f"{sources[0].path} holds" if len(sources) == 1 else f"all {len(sources)} files hold"
        raise UserInputError(f"{field}: {where} no text")
    if num_documents < need:
        raise UserInputError(
            f"{field}: holds {num_documents} document; at least 2 are needed to hold out validation "
            "(lower data.max_doc_chars or set data.val_corpus)"
        )


def whole_file_piece(source: SourceFile, field: str = "data.corpus") -> Piece:
    try:
        size = os.path.getsize(source.path)
    except OSError as e:
        raise UserInputError(f"{field}: cannot read {source.path} ({e.strerror})") from e
    if source.format == "parquet":
        return Piece(str(source.path), "parquet", 0, parquet_metadata(source.path, field).num_row_groups, size, size)
    return Piece(str(source.path), source.format, 0, size, size, size)


def read_piece(piece: Piece, text_field: str, max_doc_chars: int, field: str = "data.corpus") -> tuple[list[str], int]:
    """The piece's document texts (empty ones included, for counting) and its invalid UTF-8 sequences."""
    if piece.format == "parquet":
        return _parquet_texts(Path(piece.path), text_field, field, range(piece.start, piece.stop))
    path = Path(piece.path)
    try:
        with open(path, "rb") as f:
            start, stop = _piece_bounds(f, piece)
            f.seek(start)
            data = f.read(max(0, stop - start))
    except OSError as e:
        raise UserInputError(f"{field}: cannot read {path} ({e.strerror})") from e
    if piece.format == "jsonl":
        return _jsonl_texts(path, data, start, text_field, field)
    text, bad = decode_utf8(data)
    if not text:
        return ([""] if piece.whole_file else []), bad  # an empty file is one empty document
    return cut_document(text, max_doc_chars), bad


def parquet_metadata(path: Path | str, field: str = "data.corpus") -> pq.FileMetaData:
    """The file's footer (row groups and their sizes), with a one-line error for an unreadable file."""
    try:
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as e:
        raise UserInputError(f"{field}: {path}: not a readable parquet file ({str(e).splitlines()[0]})") from e


def _piece_bounds(f, piece: Piece) -> tuple[int, int]:
    """Actual [start, stop) of a text or jsonl piece: both nominal ends moved to the same kind of boundary."""
    separator = b"\n\n" if piece.format == "text" else b"\n"
    return _boundary_at_or_after(f, piece.start, piece.size, separator), _boundary_at_or_after(
        f, piece.stop, piece.size, separator
    )


def _boundary_at_or_after(f, offset: int, size: int, separator: bytes) -> int:
    """The first position p >= offset right after `separator` (0 and size are boundaries too)."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    back = len(separator)
    f.seek(max(0, offset - back))
    position = max(0, offset - back)
    tail = b""
    while chunk := f.read(1 << 16):
        buffer = tail + chunk
        found = buffer.find(separator)
        if found >= 0:
            return position - len(tail) + found + back
        tail = buffer[-(back - 1) :] if back > 1 else b""
        position += len(chunk)
    return size


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each invalid sequence by U+FFFD; return (text, number replaced)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # Python writes one U+FFFD per maximal invalid subsequence; any U+FFFD
        # beyond those already in the input (EF BF BD) is one replacement.
        return text, text.count("\ufffd") - data.count(b"\xef\xbf\xbd")


def cut_document(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars, preferably at blank lines.

    Paragraphs (ending after a run of blank lines) are gathered greedily up to
    max_chars; a paragraph longer than that is cut at line ends, and a line
    longer than that anywhere. Separators stay inside the pieces, so
    "".join(pieces) == text.
    """
    if len(text) <= max_chars:
        return [text]
    paragraph_ends = [m.end() for m in _BLANK_LINES.finditer(text)]
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        limit = start + max_chars
        last_paragraph = bisect.bisect_right(paragraph_ends, limit) - 1
        cut = paragraph_ends[last_paragraph] if last_paragraph >= 0 else 0
        if cut <= start:
            cut = text.rfind("\n", start, limit) + 1
        if cut <= start:
            cut = limit
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def split_train_val(documents: Sequence[str], val_fraction: float, seed: int, ensure_both: bool = True) -> np.ndarray:
    """(num_documents,) bool: which documents go to validation.

    Each document's place follows from a seeded hash of its content, so the
    split does not depend on the order or number of other documents, and
    duplicated documents never straddle the two splits. With `ensure_both`
    (prepare asks it of the corpus's first group only) each split gets at
    least one document.
    """
    if not ensure_both:
        return _val_scores(documents, seed) < np.uint64(val_fraction * 2.0**64)
    check_document_count(len(documents), need=2)
    scores = _val_scores(documents, seed)
    is_val = scores < np.uint64(val_fraction * 2.0**64)
    if not is_val.any():
        is_val[np.argmin(scores)] = True
    if is_val.all():
        is_val[np.argmax(scores)] = False
    return is_val


def _val_scores(documents: Sequence[str], seed: int) -> np.ndarray:
    seed_bytes = str(seed).encode() + b"\0"
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(seed_bytes + doc.encode("utf-8"), digest_size=8).digest(), "little")
            for doc in documents
        ],
        dtype=np.uint64,
    )


def _embedded_sources() -> list[SourceFile]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        path
        for path in sorted(root.rglob("*.py"))
        if not _EMBEDDED_EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    if not files:
        raise UserInputError(f"data.corpus: {EMBEDDED_CORPUS}: no .py files found in this Python's stdlib")
    return [SourceFile(path, "text") for path in files]


def _files_under(directory: Path, field: str) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.suffix in _FORMAT_BY_SUFFIX and p.is_file())
    if not files:
        raise UserInputError(f"{field}: no {_SUPPORTED} files under {directory}")
    return files


def _source(path: Path, field: str) -> SourceFile:
    fmt = _FORMAT_BY_SUFFIX.get(path.suffix)
    if fmt is None:
        raise UserInputError(f"{field}: unsupported file type '{path.suffix}': {path} (use {_SUPPORTED})")
    return SourceFile(path, fmt)


def _jsonl_texts(path: Path, data: bytes, start: int, text_field: str, field: str) -> tuple[list[str], int]:
    """Texts of the .jsonl lines in `data`, which begins at byte `start` of the file (a line start)."""
    content, invalid = decode_utf8(data)
    texts = []
    # Split on "\n" only: str.splitlines would also split inside JSON strings
    # holding raw U+2028 or other line separators.
    for number, line in enumerate(content.split("\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            where = _line_number(path, start, number)
            raise UserInputError(f"{field}: {path} line {where}: not valid JSON ({e.msg})") from e
        if not isinstance(record, dict) or text_field not in record:
            where = _line_number(path, start, number)
            raise UserInputError(f"{field}: {path} line {where}: no '{text_field}' field (data.text_field)")
        text = record[text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise UserInputError(
                f"{field}: {path} line {_line_number(path, start, number)}: "
                f"'{text_field}' is a {type(text).__name__}, not a string"
            )
        text, lone_surrogates = _without_lone_surrogates(text)
        texts.append(text)
        invalid += lone_surrogates
    return texts, invalid


def _line_number(path: Path, piece_start: int, line_in_piece: int) -> int:
    """1-based line number in the file (only on errors: counts the lines before the piece)."""
    before = 0
    with open(path, "rb") as f:
        remaining = piece_start
        while remaining > 0 and (chunk := f.read(min(1 << 20, remaining))):
            before += chunk.count(b"\n")
            remaining -= len(chunk)
    return before + line_in_piece + 1


def _without_lone_surrogates(text: str) -> tuple[str, int]:
    # JSON escapes can spell lone surrogates ("\ud800"), which have no UTF-8
    # form; they become U+FFFD like any other invalid sequence.
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return fixed, fixed.count("\ufffd") - text.count("\ufffd")


def _parquet_texts(path: Path, text_field: str, field: str, row_groups: range) -> tuple[list[str], int]:
    try:
        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            raise UserInputError(f"{field}: {path} has no column '{text_field}' (data.text_field)")
        column = parquet.read_row_groups(list(row_groups), columns=[text_field]).column(text_field)
    except (OSError, pa.ArrowException) as e:
        raise UserInputError(f"{field}: {path}: not a readable parquet file ({str(e).splitlines()[0]})") from e
    if not any(is_text(column.type) for is_text in _TEXT_TYPES):
        raise UserInputError(f"{field}: {path} column '{text_field}' holds {column.type}, not text")
    # Read as bytes: parquet strings are not guaranteed to be valid UTF-8.
    texts, invalid = [], 0
    for data in column.cast(pa.large_binary()).to_pylist():
        text, bad = decode_utf8(data or b"")
        texts.append(text)
        invalid += bad
    return texts, invalid
