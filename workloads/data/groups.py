"""Groups: the units a prepared dataset is built from, fixed by the input alone.

The sources, in their sorted order, are cut into pieces (a small file whole, a
big one in pieces of about `group_bytes`) and consecutive pieces are gathered
into groups of about `group_bytes`. Each group is read, split, tokenized, packed
and written by one task, into shards named after the group. Since groups depend
only on the files and their sizes, never on CPUs, nodes or Ray Data's blocks,
the prepared dataset is the same at any parallelism, and a task that is retried
rewrites the very same shards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from workloads.data.corpus import Piece, SourceFile, parquet_metadata

MIN_GROUP_BYTES = 1 << 20
MAX_GROUP_BYTES = 64 << 20
GROUPS_AIMED_AT = 64  # enough groups to keep a few dozen CPUs busy on a mid-sized corpus


@dataclass(frozen=True)
class Group:
    index: int
    split: str  # "train" (split per document by hash) or "val" (a separate validation corpus)
    pieces: tuple[Piece, ...]

    @property
    def bytes(self) -> int:
        return sum(piece.bytes for piece in self.pieces)

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "split": self.split, "pieces": [asdict(p) for p in self.pieces]})

    @staticmethod
    def from_json(text: str) -> Group:
        spec = json.loads(text)
        return Group(spec["index"], spec["split"], tuple(Piece(**piece) for piece in spec["pieces"]))


def auto_group_bytes(total_bytes: int) -> int:
    """About GROUPS_AIMED_AT groups, each between 1 and 64 MiB: a function of the corpus size only."""
    return min(MAX_GROUP_BYTES, max(MIN_GROUP_BYTES, total_bytes // GROUPS_AIMED_AT))


def plan_groups(
    sources: Sequence[SourceFile], sizes: Sequence[int], group_bytes: int, split: str, first_index: int, field: str
) -> list[Group]:
    """Groups over the sources in order, numbered from first_index."""
    groups: list[Group] = []
    pending: list[Piece] = []
    pending_bytes = 0
    for source, size in zip(sources, sizes):
        for piece in _pieces(source, size, group_bytes, field):
            pending.append(piece)
            pending_bytes += piece.bytes
            if pending_bytes >= group_bytes:
                groups.append(Group(first_index + len(groups), split, tuple(pending)))
                pending, pending_bytes = [], 0
    if pending:
        groups.append(Group(first_index + len(groups), split, tuple(pending)))
    return groups


def _pieces(source: SourceFile, size: int, group_bytes: int, field: str) -> list[Piece]:
    path = str(source.path)
    if source.format == "parquet":
        return _parquet_pieces(path, size, group_bytes, field)
    if size <= group_bytes:
        return [Piece(path, source.format, 0, size, size, size)]
    return [
        Piece(path, source.format, start, min(start + group_bytes, size), size, min(group_bytes, size - start))
        for start in range(0, size, group_bytes)
    ]


def _parquet_pieces(path: str, size: int, group_bytes: int, field: str) -> list[Piece]:
    """Runs of whole row groups of about group_bytes (compressed, as on disk)."""
    metadata = parquet_metadata(path, field)
    num_row_groups = metadata.num_row_groups
    if size <= group_bytes or num_row_groups <= 1:
        return [Piece(path, "parquet", 0, num_row_groups, size, size)]
    pieces = []
    start, run_bytes = 0, 0
    for index in range(num_row_groups):
        row_group = metadata.row_group(index)
        run_bytes += sum(row_group.column(c).total_compressed_size for c in range(row_group.num_columns))
        if run_bytes >= group_bytes or index == num_row_groups - 1:
            pieces.append(Piece(path, "parquet", start, index + 1, size, run_bytes))
            start, run_bytes = index + 1, 0
    return pieces
