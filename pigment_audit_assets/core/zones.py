"""Which zone a storage's days are in, and moving stored days to another zone.

A day file holds the events of one day *in a zone*. Changing ``PIGMENT_AUDIT_TIMEZONE`` on a
storage that already holds days would leave each old file with events of two days of the new
zone, which no later run can fix (stored events are never dropped). So the zone is written in
the storage's manifest (``pigment_audit.json``) by the first scan, every scan compares it with
its own zone and fails at its start when they differ, and :func:`rezone` (the command
``pigment-audit-rezone``) moves every stored event to its day in the new zone: raw files are
rewritten, import-record entries follow their events (so nothing is pushed twice), the CSVs of
the days that changed are removed and the days marked pending (:mod:`.pending`), so that the
next daily run rebuilds them and pushes what of them Pigment does not have yet, and rejects
stay where they are (they belong to no day).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from .client import Log
from .collect import classify
from .days import parse_zone
from .errors import ConfigError, PigmentAuditError
from .pending import mark_pending
from .storage import STORAGE_VARIABLE, Storage, storage_from_url

MANIFEST_KEY = "pigment_audit.json"
MANIFEST_VERSION = 1
ZONE_VARIABLE = "PIGMENT_AUDIT_TIMEZONE"


def read_manifest(storage: Storage) -> dict[str, Any] | None:
    """The storage's manifest, or None when no scan wrote one yet."""
    data = storage.read_bytes(MANIFEST_KEY)
    if data is None:
        return None
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{storage.uri(MANIFEST_KEY)} is not valid JSON ({error}); it holds "
                          f"the zone of the stored days: restore it, or write "
                          f'{{"version": 1, "timezone": "<zone>"}} with that zone.') from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("timezone"), str):
        raise ConfigError(f"{storage.uri(MANIFEST_KEY)} names no timezone; write "
                          f'{{"version": 1, "timezone": "<zone>"}} with the zone of the days.')
    return manifest


def check_zone(storage: Storage, zone: ZoneInfo, setting: str = ZONE_VARIABLE) -> None:
    """Fail when the storage's days are in another zone; record the zone on first use.
    ``setting`` is where the zone came from, as the error names it."""
    manifest = read_manifest(storage)
    if manifest is None:
        storage.write_bytes(MANIFEST_KEY, orjson.dumps(
            {"version": MANIFEST_VERSION, "timezone": zone.key}, option=orjson.OPT_INDENT_2))
        return
    if manifest["timezone"] != zone.key:
        raise ConfigError(
            f"{setting}={zone.key} but the days stored at {storage.url} are days of "
            f"{manifest['timezone']} ({storage.uri(MANIFEST_KEY)}). Set {setting} back "
            f"to {manifest['timezone']}, or move the stored days to the new zone first: "
            f"pigment-audit-rezone --storage {storage.url} --timezone {zone.key} "
            "(README, \"Changing the timezone\"). Nothing was fetched or written.")


@dataclass
class RezoneSummary:
    """What moving the stored days did."""

    events_moved: int = 0
    days_written: list[date] = field(default_factory=list)
    csv_removed: list[date] = field(default_factory=list)


def rezone(storage: Storage, to_zone: ZoneInfo, log: Log) -> RezoneSummary:
    """Move every stored event, reject and import-record entry to its day in ``to_zone``.

    Days are read and written one file at a time through the storage (each write whole or
    nothing); the manifest is updated last, so an interrupted run can be started again: events
    already in their new day stay there (placing is idempotent).
    """
    manifest = read_manifest(storage)
    from_zone = manifest["timezone"] if manifest else None
    summary = RezoneSummary()
    lines: dict[date, dict[str, tuple[int, bytes]]] = defaultdict(dict)
    home: dict[str, date] = {}
    old_days = [date.fromisoformat(key.split("/")[1][:10]) for key in storage.list("raw/")]
    for day in old_days:
        with storage.open_read(storage.raw_key(day)) as raw:
            for line in raw:
                if not line.strip():
                    continue
                placed = classify(orjson.loads(line), to_zone)
                if isinstance(placed, str):
                    raise PigmentAuditError(f"{storage.uri(storage.raw_key(day))} holds an "
                                            f"event that cannot be placed ({placed}).")
                event_id, new_day, at = placed
                lines[new_day][event_id] = (at, line.rstrip(b"\r\n"))
                home[event_id] = new_day
                summary.events_moved += new_day != day
    for day in sorted(set(old_days) | set(lines)):
        events = sorted(lines.get(day, {}).items(), key=lambda item: (item[1][0], item[0]))
        new = b"".join(line + b"\n" for _, (_, line) in events)
        if storage.read_bytes(storage.raw_key(day)) == new:
            continue
        # Marked before the write, as a scan marks its days: the day's events not yet in
        # Pigment (of a day that was pending, say) reach it through the next daily run, which
        # also rebuilds the CSV removed below.
        mark_pending(storage, day)
        storage.write_bytes(storage.raw_key(day), new)
        summary.days_written.append(day)
        if storage.exists(storage.csv_key(day)):
            storage.delete(storage.csv_key(day))  # rebuilt from the new raw file by the next run
            summary.csv_removed.append(day)
    _move_records(storage, home, log)
    storage.write_bytes(MANIFEST_KEY, orjson.dumps(
        {"version": MANIFEST_VERSION, "timezone": to_zone.key}, option=orjson.OPT_INDENT_2))
    log.info(f"Moved {summary.events_moved:,} event(s) from {from_zone or 'an unrecorded zone'} "
             f"to {to_zone.key}; {len(summary.days_written)} raw file(s) rewritten, "
             f"{len(summary.csv_removed)} CSV(s) removed to be rebuilt.")
    return summary


def _move_records(storage: Storage, home: dict[str, date], log: Log) -> None:
    """Split each import record's entries by the new day of their events.

    An entry is known by its import id, configuration, chunk and push time, in every day it is
    split into; a day's entry holds the union of what all records hold of it for that day.
    The records are written twice: first each with what it held before as well as what it
    gains, then as they end. So a run interrupted anywhere leaves every id on record (in two
    days at worst, which pushes nothing twice), and a run started again repeats no entry.
    """
    keys = storage.list("imports/")
    old: dict[date, list[dict[str, Any]]] = {}
    for key in keys:
        day = date.fromisoformat(key.split("/")[1][:10])
        old[day] = orjson.loads(storage.read_bytes(key) or b'{"imports": []}')["imports"]
    new: dict[date, dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)
    for day, entries in old.items():
        for entry in entries:
            by_day: dict[date, list[str]] = defaultdict(list)
            for event_id in entry.get("eventIds", []):
                by_day[home.get(event_id, day)].append(event_id)
            for new_day, ids in (by_day or {day: []}).items():
                _add_entry(new[new_day], entry, ids)
    for day, entries in new.items():  # first: nothing taken away yet
        before: dict[tuple[Any, ...], dict[str, Any]] = {}
        for entry in [*old.get(day, []), *entries.values()]:
            _add_entry(before, entry, entry.get("eventIds", []))
        _write_record(storage, day, before)
    for day, entries in new.items():
        _write_record(storage, day, entries)
    for day in old:
        if day not in new:
            storage.delete(storage.import_record_key(day))
    log.info(f"Import records of {len(new)} day(s) written.")


def _add_entry(entries: dict[tuple[Any, ...], dict[str, Any]], entry: dict[str, Any],
               ids: list[str]) -> None:
    """Add ``entry`` with ``ids`` as its event ids to a day's entries, or add the ids to the
    day's entry of the same push (without repeating one)."""
    identity = tuple(entry.get(field) for field in ("importId", "configurationId", "chunk",
                                                     "pushedAt"))
    known = entries.get(identity)
    if known is None:
        same = list(ids) == list(entry.get("eventIds", []))
        # Split, an entry keeps its import's rows: what Pigment's report counts.
        entries[identity] = dict(entry) if same else {
            **entry, "eventIds": list(ids), "rows": len(ids),
            "importRows": entry.get("importRows", entry.get("rows", len(ids)))}
        return
    held = known.get("eventIds", [])  # an entry whose answer was lost may carry none
    merged = list(dict.fromkeys([*held, *ids]))
    if len(merged) != len(held):
        known["eventIds"], known["rows"] = merged, len(merged)


def _write_record(storage: Storage, day: date,
                  entries: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    storage.write_bytes(storage.import_record_key(day), orjson.dumps(
        {"day": day.isoformat(), "imports": list(entries.values())},
        option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> int:
    """``pigment-audit-rezone``: move a storage's days to another zone."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(
        prog="pigment-audit-rezone",
        description="Move every stored day to another zone, before changing "
                    f"{ZONE_VARIABLE}. Stop the schedule first; run it once.")
    parser.add_argument("--storage", required=True,
                        help=f"the storage, as in {STORAGE_VARIABLE} (a folder or s3://...)")
    parser.add_argument("--timezone", required=True, help="the new IANA zone, e.g. Europe/Paris")
    args = parser.parse_args(argv)
    log = logging.getLogger("pigment-audit-rezone")
    try:
        storage = storage_from_url(args.storage)
        if not storage.list("raw/"):  # a mistyped path would get a new, empty storage
            raise ConfigError(f"--storage {args.storage!r} holds no day files (raw/): check "
                              f"the path, as in {STORAGE_VARIABLE}.")
        rezone(storage, parse_zone(args.timezone), log)
    except PigmentAuditError as error:
        log.error(str(error))
        return 2 if isinstance(error, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
