"""Write the flattened, density-ordered CSV from raw JSONL files, streaming.

Columns are ordered by how many events carry them, most first; ties keep the order in which
the columns first appear in the input (events are stored sorted by time, then id), which is
what the community script's ``Counter.most_common`` did. Cells are exactly what Python's
``csv`` writer wrote for the script: ``None`` as an empty cell, ``True``/``False``,
numbers with ``str()``, minimal RFC 4180 quoting, CRLF line ends, UTF-8 without BOM, and
newlines inside values kept inside their quoted cell.

A day without events gives an empty (0-byte) CSV: the columns come from the events, so there
is no header to write.

Each event is parsed and rendered once (:mod:`.shapes`: a function compiled per shape turns
it into its cells, in the shape's own column order) and its cells are kept in a scratch file;
the column order is known only once every event was counted. Writing then places each row's
cells into the final columns with a bytes %-format compiled per shape, so no event is flattened,
and no cell converted, twice. :class:`CsvTable` holds this state: :func:`write_csv` fills it
from raw files (the assets), :func:`~.collect.fetch_days` while it scans (the command line).
"""

from __future__ import annotations

import csv
import hashlib
import io
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from . import jsonio
from .client import Log
from .collector import collector_set_aside
from .flatten import flatten_event
from .lease import hold_lease
from .pending import note_csv_written
from .shapes import (
    CELL_SEPARATOR,
    MAX_CANDIDATES,
    RECORD_SEPARATOR,
    Shape,
    cell_text,
    compile_shape,
    structure,
)
from .storage import Storage, atomic_write, scratch_dir

# Past this many distinct shapes, events of new shapes are flattened one by one (same output,
# slower), so odd data with a different shape per event cannot grow the cache without bound.
MAX_SHAPES = 10_000
# Past this many (top-level keys, event type) pairs, events of new pairs go straight to the
# exact shape lookup (same output): odd data with keys that vary per event stays bounded.
MAX_DISPATCH_KEYS = 10_000
BATCH_EVENTS = 1024  # events per write to the scratch file and to the CSV
# Wider CSVs place cells with itemgetter instead of a compiled f-string: compiling one per
# shape would cost more than it saves.
MAX_COMPILED_COLUMNS = 1000
# What the scratch file holds for an event, in an array beside it: its shape's number times two,
# plus one when its cells are a JSON list (some needed quoting) rather than a line of text; or
# UNSHAPED, for a JSON object of the event's cells by column name.
UNSHAPED = 2**16 - 1  # above any shape's kind: MAX_SHAPES * 2 + 1 fits in 16 bits


@dataclass
class CsvSummary:
    """What writing one CSV produced."""

    path: str  # the CSV's URI (a local path or s3://...)
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    collisions: int = 0
    collided_columns: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    # Kept while writing, for the CSV check (defs/checks.py) to need no second read: the raw
    # events read and a digest of their ids in order, and a digest of the id cells of the rows
    # written, in order. None where not kept (the command line's CSV).
    raw_events: int | None = None
    raw_ids_digest: str | None = None
    csv_ids_digest: str | None = None


class IdDigest:
    """A SHA-256 of a sequence of event ids, in order, fed a batch at a time.

    Ids are joined with line feeds, each batch ended by one: the same sequence gives the same
    digest whatever its batches. (Ids holding a line feed could make two sequences collide;
    the check then passes where a re-read would fail, which needs such ids and a writer bug
    at once.)
    """

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def update(self, ids: list[bytes]) -> None:
        """Add ``ids`` (UTF-8) to the sequence."""
        if ids:
            ids.append(b"")
            self.hash.update(b"\n".join(ids))
            ids.pop()

    def hexdigest(self) -> str:
        """The digest so far."""
        return self.hash.hexdigest()


def iter_raw_events(raw_paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The events of raw JSONL files, in file order."""
    for raw_path in raw_paths:
        with open(raw_path, "rb") as raw:
            yield from iter_events(raw, str(raw_path))


def iter_events(raw: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """The events of one raw JSONL stream, in order; ``name`` says which file in errors."""
    for line in raw:
        if not line.isspace():  # stops at the first byte, unlike strip()'s copy
            event = jsonio.loads(line)  # integers beyond 64 bits kept exact
            if type(event) is not dict:
                raise ValueError(f"{name} holds a line that is not a JSON object; "
                                 "raw files hold one event object per line.")
            yield event


class CsvTable:
    """A CSV being built: events rendered as they come, rows added in CSV order, then written.

    :meth:`render` turns an event into its *kind* (which shape, and how its cells are kept)
    and its cells; :meth:`add_rows` appends them as the next rows. The two are apart so that a
    scan can render each event once, when it is parsed, and add the rows later in the order of the
    day files (:func:`fetch_days` with ``table=``); :func:`write_csv` does both from raw files.
    Rows are kept in a scratch file until :meth:`write`, which needs them all to order columns.
    """

    def __init__(self, scratch_dir: Path) -> None:
        scratch_dir.mkdir(parents=True, exist_ok=True)
        self.spool: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 - closed in close()
            dir=scratch_dir, prefix=".cells-")
        self.shapes: list[Shape] = []
        self.by_structure: dict[tuple[Any, ...], Shape] = {}
        # (top-level keys, event type) -> shapes seen with them: usually one, tried in turn.
        self.candidates: dict[tuple[Any, ...], list[Shape]] = {}
        self.kinds = array("H")  # per row, what its scratch record holds (see UNSHAPED)
        self.first_seen: dict[str, None] = {}  # column names in order of first appearance
        self.seen_kinds: set[int] = set()
        self.unshaped_density: Counter[str] = Counter()
        self.unshaped_collided: Counter[str] = Counter()
        self.batch: list[bytes] = []  # records not yet written to the spool
        # Set by write_csv / write_stored_csv: the raw side of the CSV check.
        self.raw_ids: IdDigest | None = None
        self.raw_events: int | None = None

    def __enter__(self) -> CsvTable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the scratch file."""
        self.spool.close()

    def render(self, event: dict[str, Any]) -> tuple[int, bytes]:
        """The event's kind and its cells, as :meth:`add_rows` takes them."""
        kind = event.get("eventType")
        key = (tuple(event), kind if type(kind) is str else None)
        for shape in self.candidates.get(key, ()):
            cells = shape.render(event)
            if cells is not None:
                break
        else:  # a shape not seen with these keys and type: the exact lookup
            shape, cells = self._identify(event, key)
        if shape is None:
            return UNSHAPED, orjson.dumps(cells)
        if type(cells) is bytes:
            return shape.number * 2, cells
        return shape.number * 2 + 1, orjson.dumps(cells)

    def add_rows(self, kinds: list[int], rows: list[bytes]) -> None:
        """Append rendered events as the CSV's next rows."""
        if not self.seen_kinds.issuperset(kinds):
            for kind, cells in zip(kinds, rows, strict=True):
                if kind not in self.seen_kinds:
                    self._first_appearance(kind, cells)
        self.kinds.extend(kinds)
        self.batch.extend(rows)
        if len(self.batch) >= BATCH_EVENTS:
            self._flush()

    def _first_appearance(self, kind: int, cells: bytes) -> None:
        if kind == UNSHAPED:  # every one is counted on its own, by its names
            record = orjson.loads(cells)
            self.first_seen.update(dict.fromkeys(record["cells"]))
            self.unshaped_density.update(record["cells"].keys())
            self.unshaped_collided.update(record["collided"])
        else:
            self.seen_kinds.add(kind)
            self.first_seen.update(dict.fromkeys(self.shapes[kind >> 1].names))

    def _flush(self) -> None:
        self.batch.append(b"")  # the last record's separator
        self.spool.write(RECORD_SEPARATOR.join(self.batch))
        self.batch.clear()

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
        if shape is None:
            row, collided = flatten_event(event)
            return None, {"cells": {name: cell_text(value) for name, value in row.items()},
                          "collided": collided}
        candidates = self.candidates.get(key)
        if candidates is None and len(self.candidates) < MAX_DISPATCH_KEYS:
            candidates = self.candidates[key] = []
        if (candidates is not None and len(candidates) < MAX_CANDIDATES
                and not any(known is shape for known in candidates)):
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

    def write(self, csv_path: Path) -> CsvSummary:
        """Write the rows added so far into one CSV at the local ``csv_path``, atomically."""
        with atomic_write(csv_path, "wb") as handle:
            summary = self.write_to(handle, str(csv_path))
        return summary

    def write_to(self, handle: IO[bytes], name: str) -> CsvSummary:
        """Write the rows added so far as one CSV into ``handle`` (``name``: its URI)."""
        if self.batch:
            self._flush()
        columns, collided = self.columns()
        summary = CsvSummary(path=name, rows=len(self.kinds), columns=columns,
                             collisions=collided.total(), collided_columns=collided)
        counted = _CountingWriter(handle)
        written_ids = IdDigest() if self.raw_ids is not None else None
        if columns:
            header = io.StringIO(newline="")
            csv.writer(header, quoting=csv.QUOTE_MINIMAL).writerow(columns)
            counted.write(header.getvalue().encode())
            self.spool.seek(0)
            _write_records(self, columns, self.spool, counted,  # type: ignore[arg-type]
                           written_ids)
        self.spool.seek(0, io.SEEK_END)  # rows added later go after the others
        summary.bytes = counted.bytes
        if self.raw_ids is not None and written_ids is not None:
            summary.raw_events, summary.raw_ids_digest = self.raw_events, self.raw_ids.hexdigest()
            summary.csv_ids_digest = written_ids.hexdigest()
        return summary


class _CountingWriter:
    """Passes bytes on to a writer and counts them."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.bytes = handle, 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return self.handle.write(data)


def _fill(table: CsvTable, events: Iterable[dict[str, Any]]) -> None:
    """Render and add ``events`` as the table's rows, keeping their count and id digest."""
    render = table.render
    digest = table.raw_ids = IdDigest()
    kinds: list[int] = []
    rows: list[bytes] = []
    ids: list[bytes] = []
    count = 0
    for event in events:
        kind, cells = render(event)
        kinds.append(kind)
        rows.append(cells)
        ids.append(str(event.get("id")).encode())
        if len(ids) >= BATCH_EVENTS:  # rows handed over a batch at a time, as the scan does
            table.add_rows(kinds, rows)
            digest.update(ids)
            count += len(ids)
            kinds, rows, ids = [], [], []
    table.add_rows(kinds, rows)
    digest.update(ids)
    table.raw_events = count + len(ids)


def write_csv(raw_paths: Iterable[Path], csv_path: Path) -> CsvSummary:
    """Flatten the events of local ``raw_paths`` into one CSV at ``csv_path``, atomically."""
    with scratch_dir("csv") as scratch, CsvTable(scratch) as table:
        _fill(table, iter_raw_events(raw_paths))
        return table.write(csv_path)


def write_stored_csv(storage: Storage, raw_key: str, csv_key: str, *,
                     before_commit: Callable[[], None] | None = None) -> CsvSummary:
    """Flatten a stored raw file into a stored CSV, streaming both; the CSV whole or not at all.

    The summary carries the raw events read, with digests of their ids and of the id cells
    written (see :class:`CsvSummary`). Raises ``FileNotFoundError`` when the raw file does
    not exist. ``before_commit`` runs once the CSV is written and before it replaces the stored
    one: if it raises, the stored CSV stays as it was.
    """
    with scratch_dir("csv") as scratch, CsvTable(scratch) as table:
        with storage.open_read(raw_key) as raw:
            _fill(table, iter_events(raw, storage.uri(raw_key)))
        with storage.writer(csv_key) as handle:
            summary = table.write_to(handle, storage.uri(csv_key))
            if before_commit is not None:
                before_commit()
            return summary


def write_day_csv(storage: Storage, day: date, *, owner: str, log: Log,
                  wait_seconds: float = 3600.0) -> CsvSummary:
    """The day's stored CSV from its stored raw file (:func:`write_stored_csv`), read and
    written under the day's raw lease, the one a scan holds while it rewrites that file.

    Without it, a CSV step reading the raw file while another run's scan rewrites it could
    finish last and leave the CSV of the older file beside the newer one. A day the daily scan
    marked as pending gets the CSV noted on its mark (:mod:`.pending`). ``owner`` names this
    writer to a run that waits for it; :class:`DayLeaseHeldError` after ``wait_seconds``.
    """
    with hold_lease(storage, storage.raw_lease_key(day), owner, log=log,
                    wait_seconds=wait_seconds) as lease, collector_set_aside():
        # A lease lost meanwhile (taken over after it expired): the CSV is not committed.
        summary = write_stored_csv(storage, storage.raw_key(day), storage.csv_key(day),
                                   before_commit=lease.check)
        lease.check()  # a lease lost meanwhile: another writer's mark is not overwritten
        note_csv_written(storage, day)
        return summary


def _write_records(table: CsvTable, columns: list[str], spool: IO[bytes], handle: IO[bytes],
                   written_ids: IdDigest | None = None) -> None:
    """The second pass: each event's cells from the scratch file, placed into ``columns``.

    With ``written_ids``, the id cell of each row written goes into it, unquoted: the cell
    the row holds in the ``id`` column (empty when it has none), in the rows' order.
    """
    place = [_placer(shape.names, columns) for shape in table.shapes]
    # Where each shape's id cell is (the last leaf named id, as placing takes it), or -1.
    id_at = [{name: index for index, name in enumerate(shape.names)}.get("id", -1)
             for shape in table.shapes]
    loads = orjson.loads
    records: list[bytes] = []
    ids: list[bytes] = []
    for kind, text in zip(table.kinds, _records(spool), strict=True):
        if kind == UNSHAPED:
            cells = loads(text)["cells"]
            records.append(((",".join([cells.get(name, "") for name in columns]) or '""')
                            + "\r\n").encode())
            if written_ids is not None:
                ids.append(cells.get("id", "").encode())
        elif kind & 1:
            row = [cell.encode() for cell in loads(text)]
            records.append(place[kind >> 1](row))
            if written_ids is not None:
                ids.append(row[id_at[kind >> 1]] if id_at[kind >> 1] >= 0 else b"")
        else:
            row = text.split(CELL_SEPARATOR)
            records.append(place[kind >> 1](row))
            if written_ids is not None:
                ids.append(row[id_at[kind >> 1]] if id_at[kind >> 1] >= 0 else b"")
        if len(records) >= BATCH_EVENTS:
            handle.write(b"".join(records))
            records.clear()
            if written_ids is not None:
                written_ids.update(_unquoted(ids))
                ids.clear()
    handle.write(b"".join(records))
    if written_ids is not None:
        written_ids.update(_unquoted(ids))


def _unquoted(cells: list[bytes]) -> list[bytes]:
    """CSV cells as their text: a quoted cell without its quotes, doubled quotes single."""
    return [cell[1:-1].replace(b'""', b'"') if cell[:1] == b'"' else cell for cell in cells]


def _records(spool: IO[bytes]) -> Iterator[bytes]:
    """The records of the scratch file, read a megabyte at a time."""
    rest = b""
    while block := spool.read(1 << 20):
        records = (rest + block).split(RECORD_SEPARATOR)
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
