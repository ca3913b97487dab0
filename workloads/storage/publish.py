"""Build a content-addressed directory once and publish it whole.

A prepared directory's name carries a hash of everything that shapes its content, so a finished one is
never built again. It is built in a staging directory beside its final place and moved there in one
step when complete: the final name is either absent or whole. Two ways to stage:

* fresh (the default): a new hidden directory each time, removed when the build fails; two builders at
  once both build, the first to publish wins and the other's copy is dropped;
* resumable (`resume_in`): a fixed staging directory that a failed build leaves for the next attempt to
  continue, built by one process at a time (the next one waits, then finds the result published). A
  build that fails on bad input removes it: the same input would fail the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

from workloads.errors import UserInputError
from workloads.storage.filesystem import LOCAL, Filesystem


class Published(enum.Enum):
    BUILT = "built"  # by this call
    FOUND = "found"  # already there
    BUILT_ELSEWHERE = "built elsewhere"  # by another process while this one waited or built


def publish_once(
    target: Path,
    build: Callable[[Path], None],
    *,
    complete: Callable[[Path], bool] | None = None,
    resume_in: Path | None = None,
    on_wait: Callable[[], None] | None = None,
    fs: Filesystem = LOCAL,
) -> Published:
    """Make `target` exist, whole, calling `build(staging_directory)` only if it does not yet.

    `complete(target)` tells a published directory from a stray one (default: it exists); a stray
    directory at `target` is refused. `resume_in`: the resumable staging directory (see the module);
    `on_wait` is called when another process is building it and this one waits.
    """
    complete = complete or fs.exists
    if complete(target):
        return Published.FOUND
    if fs.exists(target):
        raise UserInputError(f"{target} exists but is not complete; remove it and run again")
    fs.make_dirs(Path(target).parent)
    if resume_in is None:
        staging = fs.fresh_directory(target)
        try:
            build(staging)
            return Published.BUILT if fs.publish(staging, target) else Published.BUILT_ELSEWHERE
        finally:
            fs.remove_tree(staging)
    with fs.exclusive(resume_in.with_name(resume_in.name + ".lock"), on_wait):
        if complete(target):
            return Published.BUILT_ELSEWHERE
        fs.make_dirs(resume_in)
        try:
            build(resume_in)
        except UserInputError:
            fs.remove_tree(resume_in)
            raise
        if not fs.publish(resume_in, target):
            fs.remove_tree(resume_in)
            return Published.BUILT_ELSEWHERE
        return Published.BUILT
