"""Publishing a content-addressed directory once: whole or absent, never built twice, a failed build leaves nothing."""

from __future__ import annotations

import pytest

from workloads.errors import UserInputError
from workloads.storage.publish import Published, publish_once


def write(files: dict[str, str]):
    def build(directory):
        for name, text in files.items():
            (directory / name).write_text(text)

    return build


def test_a_directory_is_built_once_and_then_found(tmp_path):
    target = tmp_path / "datasets" / "thing-0123"
    assert publish_once(target, write({"a.txt": "A"})) is Published.BUILT
    assert (target / "a.txt").read_text() == "A"
    assert publish_once(target, write({"a.txt": "other"})) is Published.FOUND
    assert (target / "a.txt").read_text() == "A"
    assert sorted(p.name for p in target.parent.iterdir()) == ["thing-0123"]  # no staging directory left


def test_a_failed_build_leaves_no_directory_behind(tmp_path):
    target = tmp_path / "thing"

    def failing(directory):
        (directory / "half.txt").write_text("half")
        raise UserInputError("bad record")

    with pytest.raises(UserInputError, match="bad record"):
        publish_once(target, failing)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_published_meanwhile_by_another_process_is_kept(tmp_path):
    target = tmp_path / "thing"

    def racing(directory):
        (directory / "mine.txt").write_text("mine")
        target.mkdir()  # another builder published first
        (target / "theirs.txt").write_text("theirs")

    assert publish_once(target, racing) is Published.BUILT_ELSEWHERE
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]


def test_an_incomplete_directory_at_the_target_is_refused(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    with pytest.raises(UserInputError, match="exists but is not complete"):
        publish_once(target, write({"a.txt": "A"}), complete=lambda d: (d / "a.txt").exists())


def test_a_resumable_build_continues_after_a_crash_and_is_removed_after_bad_input(tmp_path):
    target, staging = tmp_path / "thing", tmp_path / ".tmp-thing"
    attempts = []

    def crashing_once(directory):
        attempts.append(sorted(p.name for p in directory.iterdir()))
        (directory / "part-1").write_text("done")
        if len(attempts) == 1:
            raise RuntimeError("killed")
        (directory / "part-2").write_text("done")

    with pytest.raises(RuntimeError):
        publish_once(target, crashing_once, resume_in=staging)
    assert (staging / "part-1").exists() and not target.exists()  # kept for the next attempt
    assert publish_once(target, crashing_once, resume_in=staging) is Published.BUILT
    assert attempts == [[], ["part-1"]]  # the second attempt saw the first one's part
    assert sorted(p.name for p in target.iterdir()) == ["part-1", "part-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no staging directory, no lock

    def bad_input(directory):
        raise UserInputError("corpus too small")

    with pytest.raises(UserInputError):
        publish_once(tmp_path / "other", bad_input, resume_in=tmp_path / ".tmp-other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
