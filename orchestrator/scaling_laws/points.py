"""Scaling-law sweeps: the trial record, its files, and the arrays the fits read.

A sweep trains many small models at a few compute budgets and records one `Trial`
per model. Two files carry the records:

- `trials.json` — every trial, failed ones included, as a JSON list of `Trial`
  dicts (`write_trials` / `read_trials`; the fields are documented on `Trial`).
- `points.csv` — the successful trials only, as the columns `N,D,C,loss,N_total`
  that `python -m orchestrator.scaling fit` reads (`write_points_csv` /
  `read_points_csv`; `C` and `N_total` are optional when reading).

The fits live in `orchestrator.scaling_laws.fit`, the report in
`orchestrator.scaling_laws.report`. This module needs only the standard library and
numpy, so whatever runs the sweep can write records without importing scipy.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workloads.errors import UserInputError

OK = "ok"


@dataclass(kw_only=True)
class Trial:
    """One trained model of a sweep."""

    name: str
    """Unique within the sweep, e.g. "C1e18-N3.2e7"."""
    N: float
    """Parameters the fits use; the report says which accounting (e.g. non-embedding)."""
    N_total: float | None = None
    """All trainable parameters, for the record."""
    D: float
    """Training tokens."""
    C: float | None = None
    """Training FLOPs, which place the trial on an IsoFLOP curve; None means 6 N D."""
    loss: float | None = None
    """Final validation loss (nats per token); None when the trial failed before evaluating."""
    status: str = OK
    """"ok", or what went wrong ("failed", "diverged", ...): such trials are reported, not fitted."""
    reason: str = ""
    """Why the trial failed, in a line."""
    curve: list[tuple[float, float]] = field(default_factory=list)
    """(tokens seen, validation loss) during training."""
    shape: dict[str, Any] = field(default_factory=dict)
    """The model's shape, e.g. {"n_layer": 6, "d_model": 384, "n_head": 6}."""
    lr: float | None = None
    """Peak learning rate."""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def flops(self) -> float:
        return self.C if self.C is not None else 6.0 * self.N * self.D

    def to_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["curve"] = [list(pair) for pair in self.curve]
        return record

    @classmethod
    def from_dict(cls, record: Any, where: str) -> Trial:
        """A trial from its JSON dict; `where` names it in errors (file and position)."""
        if not isinstance(record, dict):
            raise UserInputError(f"{where}: expected an object with name, N, D, ..., got {type(record).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise UserInputError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        missing = [name for name in ("name", "N", "D") if name not in record]
        if missing:
            raise UserInputError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(record["name"], str) or not record["name"]:
            raise UserInputError(f"{where}: name must be a non-empty string, got {record['name']!r}")
        where = f"{where} ({record['name']})"
        status = record.get("status", OK)
        if not isinstance(status, str):
            raise UserInputError(f"{where}: status must be a string, got {status!r}")
        values = dict(record)
        for name in ("N", "D"):
            values[name] = _positive(record[name], f"{where}: {name}")
        for name in ("N_total", "C", "lr"):
            if record.get(name) is not None:
                values[name] = _positive(record[name], f"{where}: {name}")
        if status == OK or record.get("loss") is not None:
            if record.get("loss") is None:
                raise UserInputError(f'{where}: loss is required when status is "ok"')
            values["loss"] = _positive(record["loss"], f"{where}: loss")
        if not isinstance(record.get("reason", ""), str):
            raise UserInputError(f"{where}: reason must be a string, got {record['reason']!r}")
        if not isinstance(record.get("shape", {}), dict):
            raise UserInputError(f"{where}: shape must be an object, got {record['shape']!r}")
        values["curve"] = _curve(record.get("curve", []), f"{where}: curve")
        return cls(**values)


def _positive(value: Any, where: str) -> float:
    """A positive finite number; booleans and numeric strings are refused like any other non-number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserInputError(f"{where}: expected a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise UserInputError(f"{where}: must be a positive finite number, got {value!r}")
    return float(value)


def _curve(value: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list):
        raise UserInputError(f"{where}: expected a list of [tokens, loss] pairs, got {type(value).__name__}")
    pairs = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise UserInputError(f"{where}[{i}]: expected [tokens, loss], got {pair!r}")
        pairs.append((_positive(pair[0], f"{where}[{i}] tokens"), _positive(pair[1], f"{where}[{i}] loss")))
    return pairs


def write_trials(trials: list[Trial], path: Path) -> None:
    path.write_text(json.dumps([t.to_dict() for t in trials], indent=1) + "\n")


def read_trials(path: Path) -> list[Trial]:
    try:
        records = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(records, list):
        raise UserInputError(f"{path}: expected a JSON list of trials, got {type(records).__name__}")
    trials = [Trial.from_dict(record, f"{path}: trial {i}") for i, record in enumerate(records)]
    names = [t.name for t in trials]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(f"{path}: trial name(s) used more than once: {', '.join(repeated)}")
    return trials


@dataclass(frozen=True)
class Points:
    """Successful trials as arrays of equal length, every value positive: what the fits read."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    loss: np.ndarray
    source: str = "points"
    """Names the input (a file) in error messages."""

    @classmethod
    def from_arrays(cls, N, D, loss, C=None, source: str = "points") -> Points:
        N, D, loss = (np.asarray(v, dtype=float) for v in (N, D, loss))
        C = 6.0 * N * D if C is None else np.asarray(C, dtype=float)
        return cls(N, D, C, loss, source)

    @classmethod
    def from_trials(cls, trials: list[Trial], source: str = "trials") -> Points:
        ok = [t for t in trials if t.ok]
        return cls.from_arrays(
            [t.N for t in ok], [t.D for t in ok], [t.loss for t in ok], [t.flops for t in ok], source
        )

    def take(self, index: np.ndarray) -> Points:
        return dataclasses.replace(self, N=self.N[index], D=self.D[index], C=self.C[index], loss=self.loss[index])

    def __len__(self) -> int:
        return len(self.N)


POINT_COLUMNS = ("N", "D", "C", "loss", "N_total")
REQUIRED_COLUMNS = ("N", "D", "loss")


def write_points_csv(trials: list[Trial], path: Path) -> None:
    """The successful trials' N, D, C (6 N D when the trial has none), loss and N_total (blank if unknown)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(POINT_COLUMNS)
        for t in trials:
            if t.ok:
                # repr of a float round-trips exactly (numpy scalars are converted first)
                writer.writerow(
                    [repr(float(v)) if v is not None else "" for v in (t.N, t.D, t.flops, t.loss, t.N_total)]
                )


def read_points_csv(path: Path) -> Points:
    """N, D, loss and optional C from a CSV with a header row; other columns are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise UserInputError(f"{path}: empty file (expected a header row with columns {', '.join(REQUIRED_COLUMNS)})")
    header = [cell.strip() for cell in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    columns = [c for c in ("N", "D", "C", "loss") if c in header]
    values: dict[str, list[float]] = {c: [] for c in columns}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line, e.g. at the end of the file
        for column in columns:
            index = header.index(column)
            cell = row[index].strip() if index < len(row) else ""
            values[column].append(_cell(cell, f"{path}: line {line}, column {column}"))
    if not values["N"]:
        raise UserInputError(f"{path}: no data rows after the header")
    return Points.from_arrays(values["N"], values["D"], values["loss"], values.get("C"), source=str(path))


def _cell(cell: str, where: str) -> float:
    if not cell:
        raise UserInputError(f"{where}: empty")
    try:
        value = float(cell)
    except ValueError:
        raise UserInputError(f"{where}: not a number: {cell!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UserInputError(f"{where}: must be a positive finite number, got {cell}")
    return value
