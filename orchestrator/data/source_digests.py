"""Content digests of the corpus sources, re-computed only for files that changed.

Every launch of pretrain (and every trial of a sweep) asks prepare for its
dataset, whose name hashes the sources' contents. Reading a large corpus
in full for that each time would cost minutes, so each file's digest is kept
in `<dataset root>/.source-digests.json` with the file's stat signature
(orchestrator.data.stat_records); a file whose record still matches is not read again.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.data.stat_records import read_record, stat_signature, write_record
from workloads.data.corpus import SourceDigest, SourceFile, digest_source
from workloads.errors import UserInputError

CACHE_FILE = ".source-digests.json"
_HASH_THREADS = 8  # hashlib releases the GIL: several files are read and hashed at once


def _signature(path: Path | str, field: str) -> list[int]:
    try:
        return stat_signature(path)
    except OSError as e:
        raise UserInputError(f"{field}: cannot read {path} ({e.strerror})") from e


def digest_sources_cached(
    sources: Sequence[SourceFile], field: str, cache_dir: Path, refresh: bool = False
) -> list[SourceDigest]:
    """Each source's digest: from the cache where its stat signature is unchanged (unless refresh)."""
    cache_path = Path(cache_dir) / CACHE_FILE
    cache = {} if refresh else read_record(cache_path)
    signatures = [_signature(source.path, field) for source in sources]
    digests: list[SourceDigest | None] = []
    stale = []
    for i, (source, signature) in enumerate(zip(sources, signatures)):
        entry = cache.get(str(source.path))
        if entry and entry.get("signature") == signature and entry.get("format") == source.format:
            digests.append(SourceDigest(str(source.path), source.format, entry["sha256"], signature[0]))
        else:
            digests.append(None)
            stale.append(i)
    if not stale:
        return digests  # type: ignore[return-value]
    with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(stale))) as pool:
        for i, digest in zip(stale, pool.map(lambda i: digest_source(sources[i], field), stale)):
            digests[i] = digest
            cache[digest.path] = {"signature": signatures[i], "format": digest.format, "sha256": digest.sha256}
    write_record(cache_path, cache)
    return digests  # type: ignore[return-value]
