"""One scan of the Audit API, sorted into day files: de-duplicated, complete, nothing dropped.

The API has no end bound and pages by ingestion time, newest first, so one scan from the start
of the first day reaches every event of every day in the range (an event is ingested at or after
the moment it happens). Events are spooled by event id (their lines in a scratch file, a small
index in memory, moved to a scratch SQLite file on disk past a budget, so memory stays bounded
whatever the size of a day), duplicates collapse, and each day's file is written sorted by event
time, then id, which makes a re-run produce the same file.

A day's new file is the union of what the scan found and what the day's file already held: an
event stored earlier is never lost because a later scan did not return it. Events that are not
JSON objects, lack an id or lack a parseable ``eventTimestamp`` go to the day's rejects file.

Given a :class:`CsvTable`, the scan also renders each event's CSV cells while the event is
parsed, keeps them beside its line, and adds them to the table in the order of the day files:
the command line writes its CSV without parsing the events a second time. The command line
keeps no raw files, so it asks for ``raw_files=False``: the spool then holds only the cells,
and no day's raw file is read or written (rejects files still are).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from operator import itemgetter
from pathlib import Path
from time import monotonic
from typing import IO, Any
from zoneinfo import ZoneInfo

import orjson

from . import jsonio
from .client import Log, PigmentClient
from .collector import collector_set_aside
from .days import (
    AUDIT_LOOKBACK,
    EPOCH,
    ONE_MICROSECOND,
    check_lookback,
    day_of,
    day_start,
    epoch_microseconds,
    parse_timestamp,
)
from .lease import hold_lease
from .pending import mark_pending
from .storage import Storage, naming_scratch, scratch_dir
from .table import UNSHAPED, CsvTable
from .watermark import WATERMARK_KEY, WatermarkState, read_watermark

# A progress line at most this often: in a Dagster run each is an event written to the
# instance's event log, so a line every few pages cost more than it told (a 100-page day
# logged ten); a scan paced by Pigment's limit still shows one every half minute.
PROGRESS_EVERY_SECONDS = 30.0
NAIVE_EPOCH = datetime(1970, 1, 1)
_from_iso = datetime.fromisoformat
ONE_DAY = timedelta(days=1)
# A daily run may wait in the queue before its scan starts: stay this far inside the 180 days.
LOOKBACK_MARGIN = timedelta(hours=12)
# The in-memory spool's budget, and what one event's index entry costs in it (its id, time,
# type and line position, in a set, a tuple and a day's list, with the allocator's slack):
# about 110,000 events, 40-45 MB of RSS. Past it, the spool moves to SQLite on disk. A day of
# 1,000,000 events peaks at about 90 MB (issue 5's limit: 100 MB).
MEMORY_BUDGET = 40 * 1024 * 1024
INDEX_ENTRY_BYTES = 384
READ_RUN, READ_STRETCH = 1000, 4 * 1024 * 1024  # writing a day: 1,000 lines from ≤ 4 MiB reads
# An ingestionTimestamp further ahead of this machine's clock is not trusted for the watermark:
# one bogus far-future time would move it past every event to come, and the daily scans would
# read nothing again. Left out, the watermark stays behind (re-reading costs only requests).
INGESTION_AHEAD = timedelta(days=1)
# The days whose window (their start and the next day's, in any zone: offsets are under a
# day) datetime can hold; an event on another day, or beyond datetime's range once in the zone,
# is rejected with this reason instead of stopping the scan with an OverflowError.
FIRST_DAY, LAST_DAY = date.min + ONE_DAY, date.max - ONE_DAY
OUT_OF_RANGE = (f"eventTimestamp out of range (its day must fall between {FIRST_DAY} and "
                f"{LAST_DAY})")

_Row = tuple[str, str, int, str, bytes]  # an event: id, day, epoch µs, type, line
_TypeCount = tuple[str, int, int, int, int, int]  # type, count, added, kept, first, last


@dataclass
class DayFile:
    """What one day's raw file holds after a scan (after a scan without raw files: the day's
    events that scan found; ``path`` then names a file not written, and ``bytes``,
    ``changed`` and ``lines_written`` stay unset)."""

    day: date
    path: str  # the raw file's URI (a local path or s3://...)
    events: int = 0
    bytes: int = 0
    added: int = 0
    kept_from_before: int = 0
    changed: bool = False
    event_types: Counter[str] = field(default_factory=Counter)
    first_event_at: str | None = None
    last_event_at: str | None = None
    rejected: int = 0
    rejected_path: str | None = None  # the rejects file's URI, when the day has one
    set_aside: dict[str, int] = field(default_factory=dict)  # in its rejects: events by day
    # What writing the file saw, for the raw check (defs/checks.py) to need no second read:
    first_at: int | None = None  # epoch µs of its first and last events
    last_at: int | None = None
    lines_written: int | None = None  # None: the file was left as it was
    # Events kept from the file's previous version that belong to another day: (id, day).
    misplaced: list[tuple[str, str]] = field(default_factory=list)
    # An older day the daily scan brought late events to, which had no raw file: its new file
    # holds what daily scans saw of it, which is the whole day only if a daily scan covered it.
    first_file_from_late_events: bool = False


@dataclass
class ScanResult:
    """What one scan did, over all its days."""

    days: dict[date, DayFile]
    pages: int = 0
    events_seen: int = 0
    duplicates: int = 0
    outside_range: int = 0
    rejected: int = 0
    audit_requests: int = 0
    since: datetime | None = None  # the scan's ingestedSince
    newest_ingested: datetime | None = None  # the newest ingestionTimestamp seen
    extra_days: set[date] = field(default_factory=set)  # days placed beyond those asked for
    set_aside: Counter[date] = field(default_factory=Counter)  # events of unreachable days
    watermark: datetime | None = None  # the ingestion watermark after the scan, if it moved


def classify(item: Any, zone: ZoneInfo) -> tuple[str, date, int] | str:
    """``(id, day, epoch µs)`` for a well-formed event, else the reason it is rejected."""
    if not isinstance(item, dict):
        return f"not a JSON object ({type(item).__name__})"
    event_id = item.get("id")
    if not isinstance(event_id, (str, int)) or isinstance(event_id, bool) or event_id == "":
        return "no id"
    try:
        moment = parse_timestamp(item.get("eventTimestamp"))
    except (ValueError, TypeError):
        return "no parseable eventTimestamp"
    try:
        day = day_of(moment, zone)
    except OverflowError:  # before the year 1 or after 9999 once in the zone
        return OUT_OF_RANGE
    if not FIRST_DAY <= day <= LAST_DAY:
        return OUT_OF_RANGE
    return str(event_id), day, epoch_microseconds(moment)


class _Classifier:
    """:func:`classify` for one zone, remembering the last day's window.

    Events come in runs of the same day, so most are placed by comparing their epoch
    microseconds with that window instead of converting each one into the zone.
    """

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.window = (0, 0, date.min)  # [start, end) in epoch µs, and its day

    def __call__(self, item: Any) -> tuple[str, date, int] | str:
        if type(item) is not dict:
            return classify(item, self.zone)  # the reject, with its reason
        event_id = item.get("id")
        if type(event_id) is not str or not event_id:
            return classify(item, self.zone)  # an int id, or a reject
        text = item.get("eventTimestamp")
        try:
            if type(text) is str and text[-1:] == "Z":  # Pigment's form: UTC, no offset
                at = (_from_iso(text[:-1]) - NAIVE_EPOCH) // ONE_MICROSECOND
            else:
                at = epoch_microseconds(parse_timestamp(text))
        except (ValueError, TypeError):  # TypeError: an offset before the Z
            return "no parseable eventTimestamp"
        start, end, day = self.window
        if not start <= at < end:
            try:
                day = day_of(EPOCH + at * ONE_MICROSECOND, self.zone)
            except OverflowError:  # as in classify: before the year 1 or after 9999
                return OUT_OF_RANGE
            if not FIRST_DAY <= day <= LAST_DAY:  # its window could not be computed
                return OUT_OF_RANGE
            self.window = (epoch_microseconds(day_start(day, self.zone)),
                           epoch_microseconds(day_start(day + ONE_DAY, self.zone)), day)
        return event_id, day, at


class _SqliteSpool:
    """A scratch SQLite database on disk: events by id, and rejects by content.

    Its page cache is capped at 4 MiB; the rest stays on disk. 16 KiB pages (SQLite's default
    is 4 KiB) make inserting and sorting about a fifth cheaper; a bigger cache did not help, and
    SQLite's sorter grows with it.
    """

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path)
        self.connection.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA page_size = 16384;
            PRAGMA cache_size = -4096;
            CREATE TABLE events (id TEXT PRIMARY KEY, day TEXT, at INTEGER, type TEXT,
                                 line BLOB, before INTEGER DEFAULT 0, scanned INTEGER DEFAULT 1);
            CREATE TABLE rejects (day TEXT, reason TEXT, line BLOB, UNIQUE (day, line));
            """
        )

    def add_events(self, rows: list[_Row]) -> int:
        """Insert rows whose id is not already there; how many were new."""
        before = self.connection.total_changes
        self.connection.executemany(
            "INSERT OR IGNORE INTO events (id, day, at, type, line) VALUES (?, ?, ?, ?, ?)", rows)
        return self.connection.total_changes - before

    def add_previous(self, row: _Row) -> None:
        """An event of the day's previous file: marked as stored before, added if not seen."""
        self.connection.execute(
            "INSERT INTO events (id, day, at, type, line, before, scanned) "
            "VALUES (?, ?, ?, ?, ?, 1, 0) ON CONFLICT (id) DO UPDATE SET before = 1", row)

    def add_rejects(self, rows: list[tuple[str, str, bytes]]) -> None:
        """Insert ``(day, reason, line)`` rows; a line already rejected for its day keeps its
        first reason."""
        self.connection.executemany(
            "INSERT OR IGNORE INTO rejects (day, reason, line) VALUES (?, ?, ?)", rows)

    def write_day(self, day: str, handle: IO[bytes]) -> None:
        """The day's lines, sorted by event time then id, one per line."""
        # SQLite appends the newline; a write per READ_RUN lines, not per line.
        lines = self.connection.execute(
            "SELECT CAST(line || x'0a' AS BLOB) FROM events WHERE day = ? ORDER BY at, id",
            (day,))
        while run := lines.fetchmany(READ_RUN):
            handle.write(b"".join(map(itemgetter(0), run)))

    def sorted_payloads(self, day: str) -> Iterator[bytes]:
        """The day's stored payloads, by event time then id: lines (with their cells, if
        rendered), or kinds and cells alone in a scan without raw files."""
        return map(itemgetter(0), self.connection.execute(
            "SELECT line FROM events WHERE day = ? ORDER BY at, id", (day,)))

    def day_types(self, day: str) -> list[_TypeCount]:
        """Per event type, in order of first appearance: count, added, kept, first and last."""
        return [(event_type, count, int(added), int(kept), low, high)
                for event_type, count, added, kept, low, high in self.connection.execute(
                    "SELECT type, COUNT(*), TOTAL(before = 0), TOTAL(scanned = 0), MIN(at), "
                    "MAX(at) FROM events WHERE day = ? GROUP BY type ORDER BY MIN(at), MIN(id)",
                    (day,))]

    def day_rejects(self, day: str) -> list[tuple[str, bytes]]:
        """The day's ``(reason, line)`` rejects, by line."""
        return self.connection.execute(
            "SELECT reason, line FROM rejects WHERE day = ? ORDER BY line", (day,)).fetchall()

    def close(self) -> None:
        self.connection.close()


class _Spool:
    """Events by id and rejects by content, in memory until a budget, then in SQLite.

    Ordinary days fit: the lines go to a scratch file as they come, and memory holds one small
    index entry per event (its time, id, type and where its line is). Past ``budget`` bytes
    (index entries at an estimated :data:`INDEX_ENTRY_BYTES`, plus rejected lines), everything
    moves to a :class:`_SqliteSpool` and every call goes there: memory stays bounded whatever
    the size of the scan. Both give the same answers: the first event seen with an id wins; an
    event of a day's previous file is marked as stored before, and added if the scan missed it.
    """

    def __init__(self, work: Path, budget: int) -> None:
        self.work = work
        self.budget = budget
        self.sqlite: _SqliteSpool | None = None
        self.lines = open(work / "lines.jsonl", "w+b")  # noqa: SIM115 - closed in close()
        self.size = 0  # bytes written to self.lines
        self.ids: set[str] = set()
        # day -> (at, id, type, offset, length) of its events; offset and length in self.lines
        self.days: dict[str, list[tuple[int, str, str, int, int]]] = {}
        self.before: set[str] = set()  # ids found in a day's previous file
        self.unscanned: set[str] = set()  # ids only found there
        self.rejects: dict[tuple[str, bytes], str] = {}  # (day, line) -> first reason
        self.reject_bytes = 0

    def add_events(self, rows: list[_Row]) -> int:
        """Add rows whose id is not already there; how many were new."""
        if self.sqlite is not None:
            return self.sqlite.add_events(rows)
        ids, days, offset = self.ids, self.days, self.size
        lines: list[bytes] = []
        for event_id, day, at, event_type, line in rows:
            if event_id in ids:
                continue
            ids.add(event_id)
            entries = days.get(day)
            if entries is None:
                entries = days[day] = []
            entries.append((at, event_id, event_type, offset, len(line) + 1))
            lines.append(line)
            offset += len(line) + 1
        added = len(lines)
        if added:
            lines.append(b"")  # the last line's newline
            self.lines.write(b"\n".join(lines))
            self.size = offset
            self._check_budget()
        return added

    def add_previous(self, row: _Row) -> None:
        """An event of the day's previous file: marked as stored before, added if not seen."""
        if self.sqlite is not None:
            return self.sqlite.add_previous(row)
        event_id = row[0]
        self.before.add(event_id)  # before adding: adding may move everything to SQLite
        if event_id not in self.ids:
            self.unscanned.add(event_id)
            self.add_events([row])

    def add_rejects(self, rows: list[tuple[str, str, bytes]]) -> None:
        """Add ``(day, reason, line)`` rows; a line already rejected for its day keeps its
        first reason."""
        if self.sqlite is not None:
            return self.sqlite.add_rejects(rows)
        for day, reason, line in rows:
            if (day, line) not in self.rejects:
                self.rejects[day, line] = reason
                self.reject_bytes += len(line)
        self._check_budget()

    def write_day(self, day: str, handle: IO[bytes] | None,
                  table: CsvTable | None = None) -> None:
        """The day's lines, sorted by event time then id, one per line; with ``table``, each
        event's cells (stored after its line) go to the table as its rows. Without ``handle``
        (a scan without raw files, whose events have empty lines), only the table gets them."""
        if table is not None:
            lines: list[bytes] = []
            kinds: list[int] = []
            rows: list[bytes] = []
            for payload in self.sorted_payloads(day):  # as _with_cells or _cells_only made them
                line, _, rendered = payload.partition(b"\n")
                kind, _, cells = rendered.partition(b" ")
                lines.append(line)
                kinds.append(int(kind))
                rows.append(cells)
                if len(lines) >= READ_RUN:
                    if handle is not None:
                        lines.append(b"")
                        handle.write(b"\n".join(lines))
                    table.add_rows(kinds, rows)
                    lines, kinds, rows = [], [], []
            if lines:
                if handle is not None:
                    lines.append(b"")
                    handle.write(b"\n".join(lines))
                table.add_rows(kinds, rows)
            return
        if handle is None:
            raise ValueError("a day's raw file needs a handle to go to")
        if self.sqlite is not None:
            return self.sqlite.write_day(day, handle)
        for stretch, slices in self._sorted_stretches(day):  # one write per stretch, not line
            handle.write(b"".join([stretch[start:end] for start, end in slices]))

    def sorted_payloads(self, day: str) -> Iterator[bytes]:
        """The day's stored payloads, by event time then id: lines (with their cells, if
        rendered), or kinds and cells alone in a scan without raw files."""
        if self.sqlite is not None:
            yield from self.sqlite.sorted_payloads(day)
            return
        for stretch, slices in self._sorted_stretches(day):
            for start, end in slices:
                yield stretch[start:end - 1]  # without the newline

    def _sorted_stretches(self, day: str) -> Iterator[tuple[bytes, list[tuple[int, int]]]]:
        """The day's stored lines, by time then id: stretches of the scratch file, and where
        each line (with its newline) lies in its stretch."""
        entries = self.days.get(day)
        if not entries:
            return
        entries.sort()  # by time, then id: ids are unique
        self.lines.flush()
        fd = self.lines.fileno()
        # Events arrive roughly in time order, so a run of sorted entries mostly comes from a
        # short stretch of the scratch file: read that stretch at once when it is short.
        for start in range(0, len(entries), READ_RUN):
            run = entries[start:start + READ_RUN]
            low = min(offset for _, _, _, offset, _ in run)
            high = max(offset + length for _, _, _, offset, length in run)
            if high - low <= READ_STRETCH:
                yield os.pread(fd, high - low, low), [
                    (offset - low, offset - low + length) for _, _, _, offset, length in run]
            else:
                for _, _, _, offset, length in run:
                    yield os.pread(fd, length, offset), [(0, length)]

    def day_types(self, day: str) -> list[_TypeCount]:
        """Per event type, in order of first appearance: count, added, kept, first and last."""
        if self.sqlite is not None:
            return self.sqlite.day_types(day)
        types: dict[str, list[Any]] = {}  # type -> [count, added, kept, first, last, least id]
        before, unscanned = self.before, self.unscanned
        entries = self.days.get(day, [])
        entries.sort()  # by time, then id (already, after write_day)
        for at, event_id, event_type, _, _ in entries:
            counts = types.get(event_type)
            if counts is None:
                counts = types[event_type] = [0, 0, 0, at, at, event_id]
            counts[0] += 1
            counts[1] += event_id not in before
            counts[2] += event_id in unscanned
            counts[4] = at
            if event_id < counts[5]:
                counts[5] = event_id
        # The order SQLite gives: by each type's first time, then by its least id.
        ordered = sorted(types.items(), key=lambda item: (item[1][3], item[1][5]))
        return [(event_type, *counts[:5]) for event_type, counts in ordered]

    def day_rejects(self, day: str) -> list[tuple[str, bytes]]:
        """The day's ``(reason, line)`` rejects, by line."""
        if self.sqlite is not None:
            return self.sqlite.day_rejects(day)
        return sorted(((reason, line) for (key, line), reason in self.rejects.items()
                       if key == day), key=itemgetter(1))

    def _check_budget(self) -> None:
        if len(self.ids) * INDEX_ENTRY_BYTES + self.reject_bytes <= self.budget:
            return
        sqlite = _SqliteSpool(self.work / "spool.sqlite")
        self.lines.flush()
        read, fd = os.pread, self.lines.fileno()
        self.ids = set()
        for day, entries in self.days.items():
            while entries:  # 1,000 lines at a time, dropping the entries moved: a flat peak
                sqlite.add_events([
                    (event_id, day, at, event_type, read(fd, length - 1, offset))
                    for at, event_id, event_type, offset, length in entries[-1000:]])
                del entries[-1000:]
        sqlite.connection.executemany("UPDATE events SET before = 1 WHERE id = ?",
                                      ((event_id,) for event_id in self.before))
        sqlite.connection.executemany("UPDATE events SET scanned = 0 WHERE id = ?",
                                      ((event_id,) for event_id in self.unscanned))
        sqlite.add_rejects([(day, reason, line) for (day, line), reason in self.rejects.items()])
        self.sqlite = sqlite
        self.days, self.before, self.unscanned, self.rejects = {}, set(), set(), {}
        self.lines.truncate(0)

    def close(self) -> None:
        self.lines.close()
        if self.sqlite is not None:
            self.sqlite.close()


def _event_type(item: dict[str, Any]) -> str:
    value = item.get("eventType")
    return sys.intern(value) if isinstance(value, str) else ""  # one copy per type in a spool


def _reject_day(item: Any, days: set[date], first: date, zone: ZoneInfo,
                last: date | None = None) -> date | None:
    """The day a reject is filed under: its ingestion day if in range, else the first day.

    With ``last`` (a scan from its first day's start, not from the watermark): None for one
    ingested after ``last``. That day's own run, whose scan starts at its start, files it;
    filed here too, one event would show as a reject of two days, as the runs were ranged.
    """
    if isinstance(item, dict):
        try:
            candidate = day_of(parse_timestamp(item.get("ingestionTimestamp")), zone)
        except (ValueError, TypeError, OverflowError):  # OverflowError: beyond datetime's range
            return first
        if candidate in days:
            return candidate
        if last is not None and candidate > last:
            return None
    return first


def fetch_days(
    client: PigmentClient,
    days: Iterable[date],
    zone: ZoneInfo,
    storage: Storage,
    *,
    now: datetime,
    log: Log,
    on_page: Any = None,
    table: CsvTable | None = None,
    since: datetime | None = None,
    unreachable: Callable[[date], str | None] | None = None,
    lease_wait_seconds: float = 3600.0,
    raw_files: bool = True,
) -> ScanResult:
    """Scan the Audit API once for ``days`` and write each day's raw and rejects files (only
    the rejects with ``raw_files=False``).

    With ``table``, each day's events are also added to it as CSV rows, in file order. With
    ``raw_files=False`` (which needs ``table``), the raw files are neither read nor written:
    the rows are the events of this scan alone, in the order their files would have. The scan
    starts at the first day's start, or at ``since``. Events of other days are counted and left
    out, unless ``unreachable`` is given (the incremental daily scan): then each goes into the
    raw file of its own day too, unless ``unreachable(day)`` gives a reason not to (the day is
    before the first partition, say), in which case it is set aside in the rejects with it.
    """
    wanted = sorted(set(days))
    if not wanted:
        raise ValueError("no days to fetch")
    if not raw_files and table is None:
        raise ValueError("raw_files=False needs a table: the scan would keep nothing")
    if since is None:
        check_lookback(wanted[0], zone, now)  # before any request: old files stay untouched
        since = day_start(wanted[0], zone)
    with scratch_dir("scan") as work, naming_scratch(work, "keep the scan's events"), \
            collector_set_aside():
        return _scan(client, wanted, zone, storage, work, since, unreachable, log=log,
                     on_page=on_page, table=table, ceiling=now + INGESTION_AHEAD,
                     lease_wait_seconds=lease_wait_seconds, raw_files=raw_files)


@dataclass
class IncrementalPlan:
    """Where the daily scan starts, and which days it may not write."""

    since: datetime
    state: WatermarkState
    unreachable: Callable[[date], str | None]


def plan_incremental_scan(storage: Storage, days: list[date], zone: ZoneInfo, now: datetime,
                          first_partition: date, overlap: timedelta, log: Log, *,
                          full_from: date | None = None) -> IncrementalPlan:
    """The daily scan's start: the watermark less ``overlap`` (or the start of ``full_from``,
    a day re-scanned in full, if earlier).

    No watermark yet (first run): from the start of ``days``. An unreadable one: from the
    oldest moment still within reach (the first partition, or Pigment's 180 days), which loses
    nothing and costs one long scan. A watermark older than the 180 days: from the oldest
    reachable moment, with a warning naming what can no longer be read.
    """
    state = read_watermark(storage)
    oldest = now - AUDIT_LOOKBACK + LOOKBACK_MARGIN
    earliest = max(day_start(first_partition, zone), oldest)
    runs_from = max(day_start(min(days), zone), earliest)
    if state.problem is not None:
        since = earliest
        log.warning(f"{storage.uri(WATERMARK_KEY)} could not be read ({state.problem}): this "
                    f"scan starts at the oldest moment within reach, {since:%Y-%m-%d %H:%M}Z, "
                    "so nothing is missed; the watermark is rewritten after it.")
    elif state.ingested_up_to is None:
        since = runs_from
        log.info(f"No watermark yet at {storage.uri(WATERMARK_KEY)}: this first daily scan "
                 f"starts at {since:%Y-%m-%d %H:%M}Z, the start of its days; later ones start "
                 "at the watermark it leaves.")
    else:
        since = state.ingested_up_to - overlap
        if full_from is not None:
            since = min(since, day_start(full_from, zone))
        if since < oldest:
            log.warning(f"The watermark ({state.ingested_up_to:%Y-%m-%d %H:%M}Z) is beyond "
                        "Pigment's 180-day lookback: events ingested before "
                        f"{oldest:%Y-%m-%d %H:%M}Z can no longer be read; the scan starts there.")
            since = oldest
    first_reachable = min(days) if min(days) < first_partition else first_partition

    def unreachable(day: date) -> str | None:
        if day < first_reachable:
            return f"its day {day} is before the first partition ({first_partition})"
        if day_start(day + ONE_DAY, zone) <= oldest:
            return f"its day {day} is beyond Pigment's 180-day lookback"
        return None

    return IncrementalPlan(since, state, unreachable)


def _newest_ingestion(page: list[Any], newest: datetime | None, ceiling: datetime,
                      ignored: list[datetime]) -> datetime | None:
    """The newest ``ingestionTimestamp`` so far, up to ``ceiling``: a page is ordered by
    ingestion (newest or oldest first), so its first and last events hold its newest, unless
    one of them is past the ceiling: then every event of the page is looked at. Times past the
    ceiling go to ``ignored``."""
    ends = (page[0], page[-1]) if page else ()
    for items in (ends, page):
        before = len(ignored)
        for item in items:
            if isinstance(item, dict):
                try:
                    moment = parse_timestamp(item.get("ingestionTimestamp"))
                except (ValueError, TypeError, OverflowError):
                    continue
                if moment > ceiling:
                    ignored.append(moment)
                elif newest is None or moment > newest:
                    newest = moment
        if len(ignored) == before or items is page:
            break
        del ignored[before:]  # counted again in the pass over the whole page
    return newest


def _scan(client: PigmentClient, wanted: list[date], zone: ZoneInfo, storage: Storage,
          work: Path, since: datetime, unreachable: Callable[[date], str | None] | None, *,
          log: Log, on_page: Any, table: CsvTable | None, ceiling: datetime,
          lease_wait_seconds: float, raw_files: bool) -> ScanResult:
    wanted_set = set(wanted)
    ahead: list[datetime] = []  # ingestion times past the ceiling, left out of the watermark
    place = _Classifier(zone)
    rows_only = None if raw_files else table  # the table a scan without raw files fills
    day_keys = {day: day.isoformat() for day in wanted}
    reasons: dict[date, str | None] = {}  # per day beyond those asked for: why it is set aside
    filed: dict[date, Counter[str]] = defaultdict(Counter)  # set aside, by rejects file's day
    set_aside_lines: set[tuple[date, bytes]] = set()  # what this scan set aside, by file
    spool = _Spool(work, MEMORY_BUDGET)
    result = ScanResult(days={}, since=since)
    requests_before = client.request_counts["audit"]
    next_progress = monotonic() + PROGRESS_EVERY_SECONDS
    try:
        log.info(f"Scanning Pigment audit events ingested since {since:%Y-%m-%dT%H:%M:%SZ} "
                 f"for {len(wanted)} day(s), {wanted[0]} to {wanted[-1]}"
                 + (", and every other day that gained events." if unreachable else "."))
        for page in client.iter_audit_pages(since):
            result.pages += 1
            result.newest_ingested = _newest_ingestion(page, result.newest_ingested, ceiling,
                                                       ahead)
            rows: list[_Row] = []
            rejects: list[tuple[str, str, bytes]] = []
            result.events_seen += len(page)
            for item in page:
                placed = place(item)
                if isinstance(placed, str):
                    # A backfill leaves a later reject to its own day's run; the daily scan
                    # and the command line (no later run) file it here.
                    reject_day = _reject_day(item, wanted_set, wanted[0], zone,
                                             None if unreachable or rows_only else wanted[-1])
                    if reject_day is None:  # its own day's run files it
                        result.outside_range += 1
                        continue
                    rejects.append((day_keys[reject_day], placed,
                                    jsonio.dumps(item, any_depth=True)))
                    continue
                event_id, event_day, at = placed
                if event_day not in wanted_set:
                    if unreachable is None:
                        result.outside_range += 1
                        continue
                    if event_day not in reasons:
                        reasons[event_day] = unreachable(event_day)
                        if reasons[event_day] is None:
                            day_keys[event_day] = event_day.isoformat()
                    if reasons[event_day] is not None:
                        reject_day = _reject_day(item, wanted_set, wanted[0], zone)
                        line = jsonio.dumps(item, any_depth=True)
                        # Counted as the rejects file holds it: once per day and line.
                        if (reject_day, line) not in set_aside_lines:
                            set_aside_lines.add((reject_day, line))
                            result.set_aside[event_day] += 1
                            filed[reject_day][event_day.isoformat()] += 1
                        rejects.append((day_keys[reject_day], str(reasons[event_day]), line))
                        continue
                    result.extra_days.add(event_day)
                try:
                    if rows_only is not None:
                        line = _cells_only(item, rows_only)
                    else:
                        line = jsonio.dumps(item)
                        if table is not None:  # rendered now, while parsed
                            line = _with_cells(line, item, table)
                except jsonio.Unwritable as error:  # a raw file cannot hold it: set aside
                    rejects.append((day_keys[event_day], str(error),
                                    jsonio.dumps(item, any_depth=True)))
                    continue
                rows.append((event_id, day_keys[event_day], at, _event_type(item), line))
            result.duplicates += len(rows) - spool.add_events(rows)
            if rejects:
                result.rejected += len(rejects)
                spool.add_rejects(rejects)
                log.warning(f"Page {result.pages}: {len(rejects)} event(s) rejected "
                            f"({', '.join(sorted({reason for _, reason, _ in rejects}))}).")
            if on_page is not None:
                on_page(len(page))
            if monotonic() >= next_progress:
                next_progress = monotonic() + PROGRESS_EVERY_SECONDS
                log.info(f"Fetched {result.pages} pages, {result.events_seen:,} events so far.")
        result.audit_requests = client.request_counts["audit"] - requests_before
        log.info(f"Scan done: {result.pages} pages, {result.events_seen:,} events, "
                 f"{result.duplicates} duplicate(s), {result.rejected} rejected, "
                 f"{result.outside_range} outside the days asked for.")
        if ahead:
            log.warning(f"{len(ahead)} ingestionTimestamp(s) more than {INGESTION_AHEAD} ahead of "
                        f"this machine's clock ({max(ahead):%Y-%m-%dT%H:%M:%SZ} the latest) "
                        "were not taken for the watermark: a bogus time there would stop the "
                        "daily scans from reading anything new. Their events were kept.")
        for day, count in sorted(result.set_aside.items()):
            log.warning(f"{count} event(s) of {day} set aside in the rejects: {reasons[day]}.")
        incremental = unreachable is not None
        for day in sorted(wanted_set | result.extra_days):
            if rows_only is not None:
                result.days[day] = _add_day_rows(spool, storage, day, log, rows_only)
                continue
            result.days[day] = _write_day(
                spool, storage, day, zone, log, table,
                partial_scan=incremental and since > day_start(day, zone),
                only_if_added=day not in wanted_set, older=day < wanted[0],
                lease_wait_seconds=lease_wait_seconds)
        for day, counts in filed.items():
            result.days[day].set_aside = dict(sorted(counts.items()))
    finally:
        spool.close()
    return result


def _with_cells(line: bytes, item: dict[str, Any], table: CsvTable) -> bytes:
    """What the spool stores for an event when a table is filled: its line, then its rendered
    kind and cells (a JSON line holds no raw newline; :meth:`_Spool.write_day` splits them)."""
    return b"%b\n%d %b" % (line, *table.render(item))


def _cells_only(item: dict[str, Any], table: CsvTable) -> bytes:
    """What the spool stores for an event when no raw file is written: an empty line, then its
    rendered kind and cells, as :func:`_with_cells` stores them after a line.

    Raises :class:`jsonio.Unwritable` for an event the raw file could not have held, so that
    both kinds of scan reject the same events. Only an unshaped event can be too deep: a
    compiled shape has at most ``MAX_SHAPE_CONTAINERS`` (200) containers, so it is checked
    alone, the way the raw scan checks every event. Text with a lone surrogate fails the
    rendering itself (its cells are UTF-8).
    """
    try:
        kind, cells = table.render(item)
    except (UnicodeEncodeError, orjson.JSONEncodeError) as error:
        if isinstance(error, orjson.JSONEncodeError) and "surrogates" not in str(error):
            raise
        raise jsonio.NotUnicode(jsonio.NOT_UNICODE) from None
    if kind == UNSHAPED:
        jsonio.dumps(item)
    return b"\n%d %b" % (kind, cells)


def _merge_previous(spool: _Spool, storage: Storage, file_key: str, key: str, zone: ZoneInfo,
                    table: CsvTable | None, misplaced: list[tuple[str, str]],
                    unplaced: list[tuple[str, str, bytes]]) -> str | None:
    """Add the events of the day's stored file to the spool; the file's digest, or None.

    Its events of another day stay in the file (stored events are never dropped) and are
    listed in ``misplaced`` as ``(id, their day)``, for the raw check. A line that cannot be
    placed at all (no id, no time: edited by hand) goes to ``unplaced`` as a reject
    ``(day, reason, event)``: a rewritten file cannot hold it, so the day's rejects will.
    """
    digest = hashlib.sha256()
    try:
        with storage.open_read(file_key) as previous:
            for line in previous:
                digest.update(line)
                if not line.strip():
                    continue
                item = jsonio.loads(line)
                placed = classify(item, zone)
                if isinstance(placed, str):  # a line edited by hand: for the day's rejects
                    # As the rejects file holds events (re-read in this form): filed once.
                    unplaced.append((key, f"in the stored raw file, but {placed}",
                                     jsonio.dumps(item, any_depth=True)))
                    continue
                event_id, event_day, at = placed
                if event_day.isoformat() != key:
                    misplaced.append((event_id, event_day.isoformat()))
                payload = line.rstrip(b"\r\n")
                if table is not None:
                    payload = _with_cells(payload, item, table)
                spool.add_previous((event_id, key, at, _event_type(item), payload))
    except FileNotFoundError:
        return None
    return digest.hexdigest()


class _DigestingWriter:
    """Passes bytes on to a writer, keeping their SHA-256, count and lines: no read-back
    needed."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.lines = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        self.lines += data.count(b"\n")  # a JSON line holds no raw line feed
        return self.handle.write(data)


def _write_day(spool: _Spool, storage: Storage, day: date, zone: ZoneInfo, log: Log,
               table: CsvTable | None, *, partial_scan: bool = False,
               only_if_added: bool = False, older: bool = False,
               lease_wait_seconds: float = 3600.0) -> DayFile:
    """Merge the day's stored file into the spool and write the day's file and rejects.

    ``partial_scan``: the scan started after the day began (from the watermark), so stored
    events it did not see are expected. ``only_if_added``: leave the file alone when the scan
    brought it nothing new (an older day seen only through the watermark's overlap).
    ``older``: a day before the scan's own; without a stored file its new file is flagged
    (``DayFile.first_file_from_late_events``). The day is marked pending before its file is
    written (:mod:`.pending`), until an import of it.
    """
    # Read, merge and rewrite under the day's lease: two scans writing one day at once (a
    # backfill beside the daily run, no pool limit) would each drop what only the other saw.
    with hold_lease(storage, storage.raw_lease_key(day), f"a scan in process {os.getpid()}",
                    log=log, wait_seconds=lease_wait_seconds) as lease:
        return _merge_and_write(spool, storage, day, zone, log, table, partial_scan=partial_scan,
                                only_if_added=only_if_added, older=older,
                                still_held=lease.check)


def _merge_and_write(spool: _Spool, storage: Storage, day: date, zone: ZoneInfo, log: Log,
                     table: CsvTable | None, *, partial_scan: bool,
                     only_if_added: bool, still_held: Callable[[], None],
                     older: bool = False) -> DayFile:
    key = day.isoformat()
    file_key = storage.raw_key(day)
    day_file = DayFile(day=day, path=storage.uri(file_key))
    unplaced: list[tuple[str, str, bytes]] = []
    previous_digest = _merge_previous(spool, storage, file_key, key, zone, table,
                                      day_file.misplaced, unplaced)
    _count_events(spool, key, day_file)
    # Written all the same: the watermark moves past these events, and a day whose daily run
    # failed has its events nowhere else. Its materialization says what the file may lack.
    day_file.first_file_from_late_events = older and only_if_added and previous_digest is None
    if only_if_added and previous_digest is not None and day_file.added == 0:
        # The file stays as it was (lines that cannot be placed too); new rejects are kept.
        day_file.bytes = storage.size(file_key)
        if spool.day_rejects(key):
            _write_rejects(spool, storage, day, key, day_file, log)
        return day_file
    # The rejects before the raw file: a line leaving the file is on record before it leaves.
    spool.add_rejects(unplaced)
    still_held()
    _write_rejects(spool, storage, day, key, day_file, log)
    # Before the write: a scan killed between the two leaves a harmless extra mark.
    still_held()
    mark_pending(storage, day)
    with storage.writer(file_key) as handle:
        written = _DigestingWriter(handle)
        spool.write_day(key, written, table)  # type: ignore[arg-type]
        still_held()  # a lease lost meanwhile: the stored file stays as it was
    day_file.bytes, day_file.lines_written = written.bytes, written.lines
    day_file.changed = previous_digest != written.digest.hexdigest()
    if previous_digest is None:
        day_file.added = day_file.events
    if day_file.changed and previous_digest is not None:
        log.info(f"{day}: the raw file changed since it was last written: {day_file.added} new "
                 f"event(s), {day_file.kept_from_before} kept from before.")
    if day_file.kept_from_before and not partial_scan:
        log.warning(f"{day}: {day_file.kept_from_before} event(s) stored earlier were not in "
                    "this scan; they were kept.")
    return day_file


def _add_day_rows(spool: _Spool, storage: Storage, day: date, log: Log,
                  table: CsvTable) -> DayFile:
    """A scan without raw files: the day's rows into ``table``, and its rejects file."""
    key = day.isoformat()
    day_file = DayFile(day=day, path=storage.uri(storage.raw_key(day)))
    _count_events(spool, key, day_file)
    spool.write_day(key, None, table)
    _write_rejects(spool, storage, day, key, day_file, log)
    return day_file


def _count_events(spool: _Spool, key: str, day_file: DayFile) -> None:
    """The day's counts by type, added and kept, and its first and last event times."""
    first_at = last_at = None
    for event_type, count, added, kept, low, high in spool.day_types(key):
        day_file.event_types[event_type or "(none)"] += count
        day_file.events += count
        day_file.added += added
        day_file.kept_from_before += kept
        first_at = low if first_at is None else min(first_at, low)
        last_at = high if last_at is None else max(last_at, high)
    if first_at is not None and last_at is not None:
        day_file.first_event_at, day_file.last_event_at = _iso(first_at), _iso(last_at)
        day_file.first_at, day_file.last_at = first_at, last_at


def _write_rejects(spool: _Spool, storage: Storage, day: date, key: str, day_file: DayFile,
                   log: Log) -> None:
    file_key = storage.rejected_key(day)
    existed = False
    try:
        with storage.open_read(file_key) as previous:  # rejects of earlier scans stay on record
            existed = True
            rows = [(key, str(record.get("reason", "")),
                     jsonio.dumps(record.get("event"), any_depth=True))
                    for record in map(jsonio.loads, filter(bytes.strip, previous))]
        spool.add_rejects(rows)
    except FileNotFoundError:
        pass
    rejects = spool.day_rejects(key)
    if not rejects and not existed:
        return
    with storage.writer(file_key) as handle:
        for reason, line in rejects:
            handle.write(orjson.dumps({"reason": reason, "event": orjson.Fragment(line)}))
            handle.write(b"\n")
    day_file.rejected = len(rejects)
    day_file.rejected_path = storage.uri(file_key)
    if rejects:
        log.warning(f"{day}: {len(rejects)} rejected event(s) on record in "
                    f"{day_file.rejected_path}.")


def _iso(at: int) -> str:
    return (EPOCH + at * ONE_MICROSECOND).isoformat().replace("+00:00", "Z")
