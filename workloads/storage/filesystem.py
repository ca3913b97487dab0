"""The few filesystem operations that publishing a directory needs, and their POSIX implementation.

`LocalFilesystem` serves local disks and shared volumes (NFS and the like, where `rename(2)` and
`flock(2)` behave as on a local disk). Object storage implements the same calls: a rename there is a
copy and a conditional create of a marker object, a lock a lease object.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol


class Filesystem(Protocol):
    def exists(self, path: Path) -> bool: ...

    def make_dirs(self, path: Path) -> None: ...

    def fresh_directory(self, beside: Path) -> Path:
        """A new, empty, hidden directory next to `beside` (in its parent), named after it."""
        ...

    def publish(self, source: Path, target: Path) -> bool:
        """Move the directory `source` to `target` in one step; False (and `source` left) when `target` exists."""
        ...

    def remove_tree(self, path: Path) -> None: ...

    def exclusive(
        self, lock: Path, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold `lock` exclusively for the block; if another process holds it, call `on_wait` and wait."""
        ...


class LocalFilesystem:
    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def make_dirs(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def fresh_directory(self, beside: Path) -> Path:
        beside = Path(beside)
        return Path(tempfile.mkdtemp(prefix=f".{beside.name}-", dir=beside.parent))

    def publish(self, source: Path, target: Path) -> bool:
        try:
            Path(source).rename(target)  # rename(2): atomic; refuses a non-empty target
        except OSError:
            if Path(target).exists():
                return False  # published meanwhile by another process
            raise
        return True

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def exclusive(self, lock: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        lock = Path(lock)
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as held:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(held, fcntl.LOCK_EX)
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)


LOCAL = LocalFilesystem()
