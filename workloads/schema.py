"""Declaring documented config fields.

Every config field carries its documentation where it is declared, so that
`--help` and the shipped recipes can show it without a second source of truth.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, doc: str) -> Any:
    """A dataclass field with a default and a one-line doc shown by `--help`."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def field_doc(field: dataclasses.Field) -> str:
    return field.metadata.get("doc", "")
