"""Push a day's CSV into Pigment, at most once per event, and follow the imports to the end.

Each day keeps an import record (``imports/<day>.json``): every chunk Pigment accepted, with its
import id, the event ids it carried, and, once known, its final status and report. The record is
rewritten (atomically) as soon as a chunk is accepted, so after a crash the next run pushes only
the events no accepted chunk carried, and first follows any import whose outcome it never saw.
Events of a Failed import count as not pushed: the next run pushes them again.

When Pigment answers 200 ("Import started") but the body carrying the import id is cut short,
the import exists: the chunk is recorded as accepted with status ``AnswerLost`` and no import
id, never pushed again, and reported (the import check warns that its report cannot be read).

One gap no client can close: if the connection breaks before any status line arrives (a reset
or a time-out after Pigment processed the request), nothing tells the client the import
started, so the retry pushes that chunk again. Pigment lists keyed on the event id absorb that
as an update, not a second row; the record then shows both import ids.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from .chunks import write_chunks
from .client import FINAL_IMPORT_STATUSES, Log, PigmentClient
from .errors import ImportFailedError, PigmentApiError, PushAnswerLostError
from .storage import Storage, atomic_write

REPORT_COUNTS = ("insertedCount", "updatedCount", "deletedCount", "skippedCount")
ANSWER_LOST = "AnswerLost"  # Pigment answered 200 to the push, the import id was cut off
STATUS_UNKNOWN = "StatusUnknown"  # Pigment answered 404 to the status of an accepted import


@dataclass
class ImportOutcome:
    """What pushing one day did."""

    day: date
    record_path: Path
    csv_rows: int = 0
    already_pushed: int = 0
    rows_pushed: int = 0
    chunks: int = 0
    import_ids: list[str] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPORT_COUNTS, 0))
    failed: list[str] = field(default_factory=list)
    forced: bool = False
    answer_lost: list[dict[str, Any]] = field(default_factory=list)


def load_record(path: Path, day: date) -> dict[str, Any]:
    """A day's import record, or an empty one."""
    if not path.exists():
        return {"day": day.isoformat(), "imports": []}
    return orjson.loads(path.read_bytes())


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Write the import record atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))


def pushed_event_ids(record: dict[str, Any], configuration_id: str) -> set[str]:
    """Event ids already in Pigment for a configuration: all accepted, not-Failed imports."""
    return {
        event_id
        for entry in record["imports"]
        if entry["configurationId"] == configuration_id and entry.get("status") != "Failed"
        for event_id in entry["eventIds"]
    }


def summarize_report(status: dict[str, Any]) -> dict[str, Any]:
    """The part of an import status worth keeping: counts, errors, times."""
    summary = (status.get("detailedReport") or {}).get("summary") or {}
    return {
        "status": status.get("importStatus"),
        "blockType": (status.get("detailedReport") or {}).get("blockType"),
        **{name: int(summary.get(name) or 0) for name in REPORT_COUNTS},
        "errors": [f"{error.get('name', '')}: {error.get('description', '')}"
                   for error in status.get("errorsDetails") or []],
        "completedAt": status.get("completedAt"),
    }


def push_day(
    client: PigmentClient,
    storage: Storage,
    day: date,
    configuration_id: str,
    chunk_bytes: int,
    *,
    force: bool = False,
    poll_seconds: float = 5.0,
    poll_timeout_seconds: float = 1800.0,
    log: Log,
    on_chunk: Callable[[int], None] | None = None,
) -> ImportOutcome:
    """Push the day's events not yet in Pigment, then wait for every open import to finish."""
    record_path = storage.import_record_path(day)
    record = load_record(record_path, day)
    outcome = ImportOutcome(day=day, record_path=record_path, forced=force)
    skip = set() if force else pushed_event_ids(record, configuration_id)
    work = storage.work_dir(f"push-{day.isoformat()}")
    try:
        chunks = write_chunks(storage.csv_path(day), chunk_bytes, work, skip_ids=skip)
        outcome.already_pushed = len(skip)
        for chunk in chunks:
            import_id: str | None
            try:
                import_id, status = client.push_csv(configuration_id, chunk.path), "Pushed"
            except PushAnswerLostError as error:
                import_id, status = None, ANSWER_LOST
                log.warning(f"{day}: chunk {chunk.index}/{len(chunks)}: {error}")
            entry = {
                "importId": import_id, "configurationId": configuration_id, "chunk": chunk.index,
                "rows": chunk.rows, "bytes": chunk.bytes,
                "pushedAt": datetime.now(timezone.utc).isoformat(), "status": status,
                "forced": force, "eventIds": chunk.event_ids,
            }
            record["imports"].append(entry)
            save_record(record_path, record)  # before anything else: never push it twice
            outcome.chunks += 1
            outcome.rows_pushed += chunk.rows
            if import_id is None:
                outcome.answer_lost.append(_lost_summary(day, entry))
                continue
            outcome.import_ids.append(import_id)
            log.info(f"{day}: chunk {chunk.index}/{len(chunks)} pushed ({chunk.rows:,} rows, "
                     f"{chunk.bytes:,} bytes) as import {import_id}.")
            if on_chunk is not None:
                on_chunk(chunk.bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not outcome.chunks:
        log.info(f"{day}: nothing new to push ({len(skip):,} event(s) already in Pigment).")
    _follow_open_imports(client, record, record_path, configuration_id, outcome,
                         poll_seconds, poll_timeout_seconds, log)
    if outcome.failed:
        details = "; ".join(
            f"{import_id} ({', '.join(outcome.reports[import_id]['errors']) or 'no details'})"
            for import_id in outcome.failed
        )
        raise ImportFailedError(
            f"{day}: Pigment reported {len(outcome.failed)} import(s) as Failed: {details}. "
            f"Their events will be pushed again on the next run. Record: {record_path}"
        )
    return outcome


def _follow_open_imports(client: PigmentClient, record: dict[str, Any], record_path: Path,
                         configuration_id: str, outcome: ImportOutcome, poll_seconds: float,
                         poll_timeout_seconds: float, log: Log) -> None:
    for entry in record["imports"]:
        if entry["configurationId"] != configuration_id:
            continue
        import_id = entry["importId"]
        if import_id is None:  # its answer was lost: no id to follow
            continue
        if entry.get("status") not in FINAL_IMPORT_STATUSES | {STATUS_UNKNOWN}:
            try:
                status = client.wait_for_import(import_id, poll_seconds=poll_seconds,
                                                timeout_seconds=poll_timeout_seconds)
            except PigmentApiError as error:
                if error.status != 404:
                    raise
                # Pigment no longer knows the import (an old one, say): its rows were accepted,
                # so they count as pushed; record it and go on rather than fail the day forever.
                entry["status"] = STATUS_UNKNOWN
                save_record(record_path, record)
                log.warning(f"Import {import_id}: Pigment has no status for it any more (404); "
                            "recorded as StatusUnknown, its events count as pushed.")
                continue
            report = summarize_report(status)
            entry["status"] = report["status"]
            entry["report"] = report
            save_record(record_path, record)
            log.info(f"Import {import_id}: {report['status']}, "
                     + ", ".join(f"{name} {report[name]}" for name in REPORT_COUNTS))
            if import_id not in outcome.import_ids:
                outcome.import_ids.append(import_id)  # an import an earlier run left open
            if report["status"] == "Failed":
                outcome.failed.append(import_id)
        if import_id in outcome.import_ids:
            report = entry.get("report") or {}
            outcome.reports[import_id] = report
            for name in REPORT_COUNTS:
                outcome.totals[name] += int(report.get(name) or 0)


def _lost_summary(day: date, entry: dict[str, Any]) -> dict[str, Any]:
    return {"day": day.isoformat(), "chunk": entry["chunk"], "rows": entry["rows"],
            "pushedAt": entry["pushedAt"]}
