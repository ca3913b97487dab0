"""Checksums remembered with the stat signature of the file they were computed from.

Launch-time checks (shard checksums, corpus source digests) hash a file in full once
and record its size, modification time, inode and change time beside the result;
while a later stat gives the same signature the recorded checksum stands. Rewriting,
truncating or replacing a file changes at least one of those (the change time cannot
be set back by any user).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def stat_signature(path: Path | str) -> list[int]:
    """[size, mtime_ns, inode, ctime_ns]; raises OSError for a missing or unreadable file."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def read_record(path: Path) -> dict[str, Any]:
    """The record at path, or {} when it is missing or unreadable (everything is then hashed again)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Atomically (concurrent launches may write it at once); a record that cannot be written
    (a read-only directory) only means hashing again next time."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, path)
    except OSError:
        pass
