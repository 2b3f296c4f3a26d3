"""Write the flattened, density-ordered CSV from raw JSONL files, streaming.

Columns are ordered by how many events carry them, most first; ties keep the order in which
the columns first appear in the input (events are stored sorted by time, then id), which is
what the community script's ``Counter.most_common`` did. Cells are written by Python's
``csv`` writer exactly as the script wrote them: ``None`` as an empty cell, ``True``/``False``,
numbers with ``str()``, minimal RFC 4180 quoting, CRLF line ends, UTF-8 without BOM, and
newlines inside values kept inside their quoted cell.

A day without events gives an empty (0-byte) CSV: the columns come from the events, so there
is no header to write.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .flatten import flatten_event
from .storage import atomic_write


@dataclass
class CsvSummary:
    """What writing one CSV produced."""

    path: Path
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    collisions: int = 0
    collided_columns: Counter[str] = field(default_factory=Counter)
    bytes: int = 0


def iter_raw_events(raw_paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The events of raw JSONL files, in file order."""
    for raw_path in raw_paths:
        with open(raw_path, "rb") as raw:
            for line in raw:
                if line.strip():
                    yield orjson.loads(line)


def _flattened(raw_paths: list[Path]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    for event in iter_raw_events(raw_paths):
        yield flatten_event(event)


def column_order(raw_paths: list[Path]) -> tuple[list[str], int, Counter[str]]:
    """Columns by density (then first appearance), the collision count, and collided names."""
    density: Counter[str] = Counter()
    collided: Counter[str] = Counter()
    for row, row_collided in _flattened(raw_paths):
        density.update(row.keys())
        if row_collided:
            collided.update(row_collided)
    # sorted() is stable and Counter keeps first-insertion order, so ties stay in order of
    # first appearance.
    columns = [name for name, _ in sorted(density.items(), key=lambda item: -item[1])]
    return columns, collided.total(), collided


def write_csv(raw_paths: Iterable[Path], csv_path: Path) -> CsvSummary:
    """Flatten the events of ``raw_paths`` into one CSV at ``csv_path``, atomically."""
    raw_paths = list(raw_paths)
    columns, collisions, collided = column_order(raw_paths)
    summary = CsvSummary(path=csv_path, columns=columns, collisions=collisions,
                         collided_columns=collided)
    with atomic_write(csv_path, "w", newline="", encoding="utf-8") as handle:
        if columns:
            writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
            writer.writerow(columns)
            rows = 0
            for row, _ in _flattened(raw_paths):
                writer.writerow([row.get(name) for name in columns])
                rows += 1
            summary.rows = rows
    summary.bytes = csv_path.stat().st_size
    return summary
