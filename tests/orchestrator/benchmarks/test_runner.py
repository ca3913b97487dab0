"""Choosing the bench's sections: bad choices fail before anything runs."""

from __future__ import annotations

import pytest

from orchestrator.bench import main
from workloads.errors import UserInputError


def test_unknown_section_fails_before_anything_runs():
    with pytest.raises(UserInputError, match="unknown section"):
        main(["--only", "nonsense"])
    with pytest.raises(UserInputError, match="needs --quality"):
        main(["--only", "quality"])
