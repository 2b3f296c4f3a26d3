"""Write the flattened, density-ordered CSV from raw JSONL files, streaming.

Columns are ordered by how many events carry them, most first; ties keep the order in which
the columns first appear in the input (events are stored sorted by time, then id), which is
what the community script's ``Counter.most_common`` did. Cells are written by Python's
``csv`` writer exactly as the script wrote them: ``None`` as an empty cell, ``True``/``False``,
numbers with ``str()``, minimal RFC 4180 quoting, CRLF line ends, UTF-8 without BOM, and
newlines inside values kept inside their quoted cell.

A day without events gives an empty (0-byte) CSV: the columns come from the events, so there
is no header to write.

Speed: events of one type nearly always share one *shape* (the same keys, list lengths and
value types, recursively), hence the same flattened column names. The first pass reads each
event's shape and leaf values in one cheap walk, flattens the names only once per shape, and
keeps the values in a scratch file; the second pass places each event's values into the
columns with one C-level ``itemgetter`` per shape. No event is parsed or flattened twice.
"""

from __future__ import annotations

import csv
import marshal
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from .flatten import flatten_event, iter_flat
from .storage import atomic_write

# Past this many distinct shapes, events of new shapes are flattened one by one (same output,
# slower), so odd data with a different shape per event cannot grow the cache without bound.
MAX_SHAPES = 10_000
BATCH_EVENTS = 1024  # events per scratch-file record: bounds the memory of both passes
_UNSHAPED = -1  # shape id of an event stored as a flat row (dict) rather than as leaf values


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
                    yield orjson.loads(line)


def _walk(node: dict[str, Any] | list[Any], shape: list[Any], values: list[Any]) -> None:
    """Append ``node``'s shape to ``shape`` and its leaves to ``values``, in flatten order.

    The shape records, per container in depth-first order, its keys (dicts) and the types of
    its children: together they determine every flattened name, and equal shapes give equal
    names. ``type`` is compared exactly: JSON parsing yields plain dict, list and scalars.
    """
    if type(node) is dict:
        shape.append(tuple(node))
        children: Any = node.values()
    else:
        children = node
    kinds = tuple(map(type, children))
    shape.append(kinds)
    if dict in kinds or list in kinds:
        append = values.append
        for child in children:
            if type(child) is dict or type(child) is list:
                _walk(child, shape, values)
            else:
                append(child)
    else:
        values.extend(children)  # all leaves: the common case, done in C


@dataclass
class _Shape:
    """The flattened names of one shape of event, and how many events have it."""

    names: list[str]  # one per leaf, in leaf order; a collision repeats a name
    collided: list[str]
    count: int = 0


class _Scan:
    """The first pass: shapes, their counts, column densities, and each event's cells."""

    def __init__(self) -> None:
        self.shapes: dict[tuple[Any, ...], int] = {}
        self.by_id: list[_Shape] = []
        self.first_seen: dict[str, None] = {}  # column names in order of first appearance
        self.unshaped_density: Counter[str] = Counter()
        self.unshaped_collided: Counter[str] = Counter()
        self.rows = 0

    def add(self, event: dict[str, Any]) -> tuple[int, Any]:
        """Record one event; its shape id and cell texts (or its flat row, if unshaped)."""
        self.rows += 1
        shape: list[Any] = []
        values: list[Any] = []
        _walk(event, shape, values)
        key = tuple(shape)
        shape_id = self.shapes.get(key)
        if shape_id is None:
            row, collided = flatten_event(event)
            self.first_seen.update(dict.fromkeys(row))
            if len(self.by_id) >= MAX_SHAPES:
                self.unshaped_density.update(row.keys())
                self.unshaped_collided.update(collided)
                return _UNSHAPED, row
            shape_id = self.shapes[key] = len(self.by_id)
            self.by_id.append(_Shape([name for name, _ in iter_flat(event)], collided))
        self.by_id[shape_id].count += 1
        cells = _cells(values)
        cells.append("")  # the cell of every column this shape lacks
        return shape_id, cells

    def columns(self) -> tuple[list[str], Counter[str]]:
        """Columns by density, ties by first appearance; the collided names and counts."""
        density = Counter(dict.fromkeys(self.first_seen, 0))
        collided: Counter[str] = Counter()
        for shape in self.by_id:
            for name in set(shape.names):
                density[name] += shape.count
            for name in shape.collided:
                collided[name] += shape.count
        density.update(self.unshaped_density)
        collided.update(self.unshaped_collided)
        # sorted() is stable and the counter keeps first-appearance order, so ties stay in it.
        columns = [name for name, _ in sorted(density.items(), key=lambda item: -item[1])]
        return columns, collided


def _scan(raw_paths: list[Path], spool: IO[bytes] | None) -> _Scan:
    """Read every event once; with ``spool``, keep each event's values there, in batches."""
    scan = _Scan()
    batch: list[tuple[int, Any]] = []
    for event in iter_raw_events(raw_paths):
        placed = scan.add(event)
        if spool is not None:
            batch.append(placed)
            if len(batch) >= BATCH_EVENTS:
                _write_batch(spool, batch)
                batch = []
    if spool is not None and batch:
        _write_batch(spool, batch)
    return scan


def _write_batch(spool: IO[bytes], batch: list[tuple[int, Any]]) -> None:
    # marshal: the fastest exact round trip of str, int (any size), float, bool and None.
    data = marshal.dumps(batch)
    spool.write(len(data).to_bytes(8, "little"))
    spool.write(data)


def _read_batches(spool: IO[bytes]) -> Iterator[list[tuple[int, Any]]]:
    spool.seek(0)
    while header := spool.read(8):
        yield marshal.loads(spool.read(int.from_bytes(header, "little")))


def column_order(raw_paths: list[Path]) -> tuple[list[str], int, Counter[str]]:
    """Columns by density (then first appearance), the collision count, and collided names."""
    columns, collided = _scan(list(raw_paths), None).columns()
    return columns, collided.total(), collided


def write_csv(raw_paths: Iterable[Path], csv_path: Path) -> CsvSummary:
    """Flatten the events of ``raw_paths`` into one CSV at ``csv_path``, atomically."""
    raw_paths = list(raw_paths)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=csv_path.parent, prefix=".values-") as spool:
        scan = _scan(raw_paths, spool)
        columns, collided = scan.columns()
        summary = CsvSummary(path=csv_path, columns=columns, collisions=collided.total(),
                             collided_columns=collided)
        with atomic_write(csv_path, "w", newline="", encoding="utf-8") as handle:
            if columns:
                writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL)
                writer.writerow(columns)
                place = [_placer(shape.names, columns) for shape in scan.by_id]
                join = ",".join
                for batch in _read_batches(spool):
                    records: list[str] = []  # written once per batch: far fewer write calls
                    for shape_id, cells in batch:
                        if shape_id == _UNSHAPED:
                            handle.write("".join(records))
                            records.clear()
                            writer.writerow([cells.get(name) for name in columns])
                        else:
                            # A record of one empty cell is the one csv.writer quotes ("").
                            records.append((join(place[shape_id](cells)) or '""') + "\r\n")
                    handle.write("".join(records))
                summary.rows = scan.rows
    summary.bytes = csv_path.stat().st_size
    return summary


def _cells(values: list[Any]) -> list[str]:
    """Leaf values as the text of their CSV cells, quoted as ``csv.writer`` quotes them.

    The module writes ``None`` as an empty cell and anything else as ``str()`` (for floats the
    same as the ``repr`` it uses); with QUOTE_MINIMAL it quotes a cell holding a comma, a double
    quote, CR or LF, doubling its double quotes. Many events hold none of these, which one
    search over all their text at once tells.
    """
    texts = [value if type(value) is str else "" if value is None else str(value)
             for value in values]
    joined = "".join(texts)
    if "," in joined or '"' in joined or "\n" in joined or "\r" in joined:
        texts = [_quoted(text) if "," in text or '"' in text or "\n" in text or "\r" in text
                 else text for text in texts]
    return texts


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _placer(names: list[str], columns: list[str]) -> Any:
    """A function from a shape's leaf cells (plus a final empty one) to the CSV row's cells."""
    last = {name: index for index, name in enumerate(names)}  # a collision: the last wins
    missing = len(names)  # the empty cell appended after the leaves
    positions = [last.get(name, missing) for name in columns]
    if len(positions) == 1:  # itemgetter of one index returns a bare value, not a tuple
        return lambda values: (values[positions[0]],)
    return itemgetter(*positions)
