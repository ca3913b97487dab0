"""A tree's identity: what it excludes changes nothing, everything else changes it; validation section by section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from orchestrator.config.tree import EVERY_FIELD, ConfigTree, tree_identity
from workloads.errors import UserInputError


@dataclass
class Speed:
    value: float = 1.0
    unit: str = "m/s"

    def validate(self) -> None:
        if self.value < 0:
            raise UserInputError(f"speed.value: must be >= 0, got {self.value}")


@dataclass
class Where:
    name: str = "here"

    def validate(self) -> None:
        pass


@dataclass
class Tree(ConfigTree):
    speed: Speed = dataclasses.field(default_factory=Speed)
    where: Where = dataclasses.field(default_factory=Where)

    def check(self) -> None:
        if self.where.name == "nowhere" and self.speed.value > 0:
            raise UserInputError("where.name=nowhere: cannot move")


EXCLUDED = {"where": EVERY_FIELD, "speed": {"unit"}}


def test_only_what_is_not_excluded_changes_the_identity():
    base = tree_identity(Tree(), EXCLUDED)
    assert len(base) == 16
    assert tree_identity(Tree(where=Where("there")), EXCLUDED) == base  # a whole section left out
    assert tree_identity(Tree(speed=Speed(unit="km/h")), EXCLUDED) == base  # a field left out
    assert tree_identity(Tree(speed=Speed(2.0)), EXCLUDED) != base
    assert tree_identity(Tree(), EXCLUDED, {"data": "sha256-of-a-file"}) != base


def test_validate_checks_each_section_then_across_sections():
    with pytest.raises(UserInputError, match="speed.value: must be >= 0"):
        Tree(speed=Speed(-1.0)).validate()
    with pytest.raises(UserInputError, match="cannot move"):
        Tree(where=Where("nowhere")).validate()
    Tree(speed=Speed(0.0), where=Where("nowhere")).validate()
