"""What every command's config tree shares: validation section by section, then across sections, and its
identity (the hash of what determines a run's result).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any

EVERY_FIELD = frozenset({"*"})  # in an exclusion list: the whole section is left out


class ConfigTree:
    """Base of a config tree: a dataclass whose fields are sections, each with its own `validate()`.

    `validate()` checks every section on its own, then calls `check()`, the tree's checks across
    sections (a stage overrides it).
    """

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        self.check()

    def check(self) -> None:
        """Checks that need more than one section; none by default."""


def tree_identity(tree: Any, excluded: Mapping[str, Collection[str]], extra: Mapping[str, Any] | None = None) -> str:
    """16 hex digits of the sha256 of every section of `tree` without the fields `excluded` lists for it
    (EVERY_FIELD leaves the whole section out), and of `extra` (inputs beyond the tree, e.g. files' digests)."""
    identity: dict[str, Any] = {}
    for section in dataclasses.fields(tree):
        left_out = excluded.get(section.name, ())
        if left_out == EVERY_FIELD:
            continue
        values = dataclasses.asdict(getattr(tree, section.name))
        identity[section.name] = {key: value for key, value in values.items() if key not in left_out}
    identity.update(extra or {})
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
