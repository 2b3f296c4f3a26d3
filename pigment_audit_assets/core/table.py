"""Write the flattened, density-ordered CSV from raw JSONL files, streaming.

Columns are ordered by how many events carry them, most first; ties keep the order in which
the columns first appear in the input (events are stored sorted by time, then id), which is
what the community script's ``Counter.most_common`` did. Cells are written by Python's
``csv`` writer exactly as the script wrote them: ``None`` as an empty cell, ``True``/``False``,
numbers with ``str()``, minimal RFC 4180 quoting, CRLF line ends, UTF-8 without BOM, and
newlines inside values kept inside their quoted cell.

A day without events gives an empty (0-byte) CSV: the columns come from the events, so there
is no header to write.

Two passes, each event parsed once. The first reads the events, finds each one's shape
(:mod:`.shapes`: a function compiled per shape renders its cells) and keeps the cells in a
scratch file, in the shape's own column order; the column order is known only once every event
was counted. The second pass places each event's cells into the final columns with a function
compiled per shape (an f-string), so no event is flattened, and no cell converted, twice.
"""

from __future__ import annotations

import csv
import io
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from .flatten import flatten_event
from .shapes import (
    CELL_SEPARATOR,
    MAX_CANDIDATES,
    RECORD_SEPARATOR,
    Shape,
    cell_text,
    compile_shape,
    structure,
)
from .storage import atomic_write

# Past this many distinct shapes, events of new shapes are flattened one by one (same output,
# slower), so odd data with a different shape per event cannot grow the cache without bound.
MAX_SHAPES = 10_000
BATCH_EVENTS = 1024  # events per write to the scratch file and to the CSV
# Wider CSVs place cells with itemgetter instead of a compiled f-string: compiling one per
# shape would cost more than it saves.
MAX_COMPILED_COLUMNS = 1000
# What the scratch file holds for an event, in an array beside it: its shape's number times two,
# plus one when its cells are a JSON list (some needed quoting) rather than a line of text; or
# UNSHAPED, for a JSON object of the event's cells by column name.
UNSHAPED = 2**32 - 1


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
                if not line.isspace():  # stops at the first byte, unlike strip()'s copy
                    event = orjson.loads(line)
                    if type(event) is not dict:
                        raise ValueError(f"{raw_path} holds a line that is not a JSON object; "
                                         "raw files hold one event object per line.")
                    yield event


class _Scan:
    """The first pass: each event's shape and cells; column densities and first appearances."""

    def __init__(self) -> None:
        self.shapes: list[Shape] = []
        self.by_structure: dict[tuple[Any, ...], Shape] = {}
        # (top-level keys, event type) -> shapes seen with them: usually one, tried in turn.
        self.candidates: dict[tuple[Any, ...], list[Shape]] = {}
        self.kinds = array("I")  # per event, what its scratch line holds (see UNSHAPED)
        self.first_seen: dict[str, None] = {}  # column names in order of first appearance
        self.unshaped_density: Counter[str] = Counter()
        self.unshaped_collided: Counter[str] = Counter()

    def read(self, raw_paths: list[Path], spool: IO[bytes]) -> None:
        """Read every event, keeping its kind here and its cells as one record of ``spool``."""
        candidates_get = self.candidates.get
        add_kind = self.kinds.append
        dumps = orjson.dumps
        separator = RECORD_SEPARATOR.encode()
        lines: list[bytes] = []  # encoded one by one: a joined str takes its widest character
        for event in iter_raw_events(raw_paths):
            kind = event.get("eventType")
            key = (tuple(event), kind if type(kind) is str else None)
            for shape in candidates_get(key, ()):
                cells = shape.render(event)
                if cells is not None:
                    break
            else:  # a shape not seen with these keys and type: the exact lookup
                shape, cells = self._identify(event, key)
            if shape is None:
                add_kind(UNSHAPED)
                lines.append(dumps(cells))
            elif type(cells) is str:
                add_kind(shape.number * 2)
                lines.append(cells.encode())
            else:
                add_kind(shape.number * 2 + 1)
                lines.append(dumps(cells))
            if len(lines) >= BATCH_EVENTS:
                lines.append(b"")  # the last record's separator
                spool.write(separator.join(lines))
                lines.clear()
        if lines:
            lines.append(b"")
            spool.write(separator.join(lines))

    def _identify(self, event: dict[str, Any], key: tuple[Any, ...]
                  ) -> tuple[Shape | None, Any]:
        """The event's shape and rendered cells; ``(None, cells by name)`` if unshaped."""
        shape_key = structure(event)
        shape = self.by_structure.get(shape_key)
        if shape is None and len(self.shapes) < MAX_SHAPES:
            shape = compile_shape(event, len(self.shapes))
            if shape is not None:  # else too big to compile: written the generic way
                self.shapes.append(shape)
                self.by_structure[shape_key] = shape
                self.first_seen.update(dict.fromkeys(shape.names))
        if shape is None:
            row, collided = flatten_event(event)
            self.first_seen.update(dict.fromkeys(row))
            self.unshaped_density.update(row.keys())
            self.unshaped_collided.update(collided)
            return None, {name: cell_text(value) for name, value in row.items()}
        candidates = self.candidates.setdefault(key, [])
        if len(candidates) < MAX_CANDIDATES and not any(known is shape for known in candidates):
            candidates.append(shape)
        return shape, shape.render(event)

    def columns(self) -> tuple[list[str], Counter[str]]:
        """Columns by density, ties by first appearance; the collided names and counts."""
        density = Counter(dict.fromkeys(self.first_seen, 0))
        collided: Counter[str] = Counter()
        for kind, count in Counter(self.kinds).items():
            if kind == UNSHAPED:
                continue
            shape = self.shapes[kind >> 1]
            for name in shape.names:
                density[name] += count
            for name in shape.collided:
                collided[name] += count
        density.update(self.unshaped_density)
        collided.update(self.unshaped_collided)
        # sorted() is stable and the counter keeps first-appearance order, so ties stay in it.
        columns = [name for name, _ in sorted(density.items(), key=lambda item: -item[1])]
        return columns, collided


def write_csv(raw_paths: Iterable[Path], csv_path: Path) -> CsvSummary:
    """Flatten the events of ``raw_paths`` into one CSV at ``csv_path``, atomically."""
    raw_paths = list(raw_paths)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=csv_path.parent, prefix=".cells-") as spool:
        scan = _Scan()
        scan.read(raw_paths, spool)
        columns, collided = scan.columns()
        summary = CsvSummary(path=csv_path, rows=len(scan.kinds), columns=columns,
                             collisions=collided.total(), collided_columns=collided)
        with atomic_write(csv_path, "wb") as handle:
            if columns:
                header = io.StringIO(newline="")
                csv.writer(header, quoting=csv.QUOTE_MINIMAL).writerow(columns)
                handle.write(header.getvalue().encode())
                spool.seek(0)
                _write_records(scan, columns, spool, handle)
    summary.bytes = csv_path.stat().st_size
    return summary


def _write_records(scan: _Scan, columns: list[str], spool: IO[bytes], handle: IO[bytes]
                   ) -> None:
    """The second pass: each event's cells from the scratch file, placed into ``columns``."""
    place = [_placer(shape.names, columns) for shape in scan.shapes]
    loads = orjson.loads
    separator = CELL_SEPARATOR.encode()
    records: list[bytes] = []
    for kind, text in zip(scan.kinds, _records(spool), strict=True):
        if kind == UNSHAPED:
            cells = loads(text)
            records.append(((",".join([cells.get(name, "") for name in columns]) or '""')
                            + "\r\n").encode())
        elif kind & 1:
            records.append(place[kind >> 1]([cell.encode() for cell in loads(text)]))
        else:
            records.append(place[kind >> 1](text.split(separator)))
        if len(records) >= BATCH_EVENTS:
            handle.write(b"".join(records))
            records.clear()
    handle.write(b"".join(records))


def _records(spool: IO[bytes]) -> Iterator[bytes]:
    """The records of the scratch file, read a megabyte at a time."""
    separator = RECORD_SEPARATOR.encode()
    rest = b""
    while block := spool.read(1 << 20):
        records = (rest + block).split(separator)
        rest = records.pop()  # the start of a record the next block finishes
        yield from records
    if rest:
        raise ValueError("the scratch file of cells ends inside a record")


def _placer(names: list[str], columns: list[str]) -> Callable[[list[bytes]], bytes]:
    """A function from a shape's cells (UTF-8, in ``names`` order) to its CSV record."""
    position = {name: index for index, name in enumerate(names)}
    if len(columns) == 1:  # a record of one empty cell is the one csv.writer quotes ("")
        index = position.get(columns[0])
        if index is None:
            return lambda cells: b'""\r\n'
        return lambda cells: (cells[index] or b'""') + b"\r\n"
    if len(columns) > MAX_COMPILED_COLUMNS:
        missing = len(names)  # the empty cell appended after the shape's own
        getter = itemgetter(*[position.get(name, missing) for name in columns])
        return lambda cells: b",".join(getter([*cells, b""])) + b"\r\n"
    # One bytes %-format per shape: C-level, no join of the many empty cells.
    template = ",".join("%b" if name in position else "" for name in columns)
    arguments = "".join(f"cells[{position[name]}], " for name in columns if name in position)
    namespace: dict[str, Any] = {}
    exec(compile(f"def place(cells): return b\"{template}\\r\\n\" % ({arguments})",
                 "<placer>", "exec"), namespace)
    return namespace["place"]
