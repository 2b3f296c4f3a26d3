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

Memory stays bounded whatever the size of the day (:mod:`.record_io`): while a day is pushed,
each entry's event ids are in a scratch file, not in a list; the record is read streaming when
it is big and written streaming always, and the ids already pushed are looked up in a set that
moves to SQLite past 200,000 ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import count, islice
from pathlib import Path
from typing import Any

import orjson

from .chunks import Chunk, write_chunks
from .client import FINAL_IMPORT_STATUSES, Log, PigmentClient
from .errors import (
    ImportFailedError,
    PigmentApiError,
    PigmentAuditError,
    PushAnswerLostError,
    StorageError,
)
from .lease import DEFAULT_TTL_SECONDS, hold_lease
from .record_io import (
    ID_BATCH,
    WHOLE_RECORD_BYTES,
    IdFile,
    IdSet,
    id_batches,
    read_json_stream,
    write_json,
)
from .storage import UNSAVED_FOLDER, Storage, naming_scratch, scratch_dir, scratch_root

REPORT_COUNTS = ("insertedCount", "updatedCount", "deletedCount", "skippedCount")
# What a List import's report must add up to: every row it carried (a deletion is not a row).
REPORT_SUMS = ("insertedCount", "updatedCount", "skippedCount")
ANSWER_LOST = "AnswerLost"  # Pigment answered 200 to the push, the import id was cut off
STATUS_UNKNOWN = "StatusUnknown"  # Pigment answered 404 to the status of an accepted import
SHORT = "Short"  # Completed, but its report does not account for every row it carried
SKIPPED = "Skipped"  # Completed, and Pigment skipped some of its rows


@dataclass
class ImportOutcome:
    """What pushing one day did."""

    day: date
    record_path: str  # the import record's URI
    record: dict[str, Any] = field(default_factory=lambda: {"imports": []})
    csv_rows: int = 0
    already_pushed: int = 0
    rows_pushed: int = 0
    chunks: int = 0
    import_ids: list[str] = field(default_factory=list)  # imports this run pushed
    # Imports an earlier run pushed and left open, which this run waited for.
    imports_followed: list[str] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPORT_COUNTS, 0))
    failed: list[str] = field(default_factory=list)
    forced: bool = False
    answer_lost: list[dict[str, Any]] = field(default_factory=list)
    # The day's imports (of any run) whose rows are not known to be in Pigment, and whose
    # events are not all in an import that is (see :func:`doubt`): import id, or "chunk N
    # pushed at T" for a lost answer, to the doubt, the rows and what the report counted.
    # Worked out by push_day while the ids are at hand; None: not worked out (the import
    # check then works it out from the record's eventIds lists).
    unverified: dict[str, dict[str, Any]] | None = None

    def rows_not_in_pigment(self) -> int:
        """Rows of ``unverified`` imports that Pigment's report says it did not take: the
        skipped ones, and those a short report does not account for."""
        # An import split between days (a zone change): each day is charged at most its rows.
        return sum(min(item["rows"], item["importRows"] - item["taken"])
                   for item in (self.unverified or {}).values()
                   if item["doubt"] in (SHORT, SKIPPED))


def load_record(storage: Storage, day: date) -> dict[str, Any]:
    """A day's import record (with any entries a failed save left in the journal), or an
    empty one."""
    data = storage.read_bytes(storage.import_record_key(day))
    record = {"day": day.isoformat(), "imports": []} if data is None else orjson.loads(data)
    journal = unsaved_journal(storage, day)
    if journal.exists():
        _absorb_journal(record, journal, lambda: [
            orjson.loads(line) for line in journal.read_bytes().splitlines()])
    return record


def read_record(storage: Storage, day: date, work: Path) -> dict[str, Any]:
    """:func:`load_record` in bounded memory: a big record (or journal) is streamed, each
    entry's ``eventIds`` going to an :class:`IdFile` under ``work``."""
    files = count()

    def new_id_file() -> IdFile:
        return IdFile(work / "record-ids" / f"{next(files):06d}.ids")

    key = storage.import_record_key(day)
    size = storage.size(key) if storage.exists(key) else None
    if size is None:
        record = {"day": day.isoformat(), "imports": []}
    elif size <= WHOLE_RECORD_BYTES:
        record = orjson.loads(storage.read_bytes(key) or b"")
    else:
        with storage.open_read(key) as stream:
            record = next(read_json_stream(stream, new_id_file))
    journal = unsaved_journal(storage, day)
    if journal.exists():

        def streamed() -> list[Any]:  # each entry's ids in an id file
            with open(journal, "rb") as stream:
                return list(read_json_stream(stream, new_id_file))

        _absorb_journal(record, journal, streamed)
    return record


def _absorb_journal(record: dict[str, Any], journal: Path,
                    read_entries: Callable[[], list[Any]]) -> None:
    """Append the journal's entries (``read_entries()``) that the record does not hold yet.
    A journal that cannot be parsed, or holds something other than entries with an import id,
    a chunk and a push time, raises :func:`_damaged`'s error naming it."""
    known = {(entry["importId"], entry["chunk"], entry["pushedAt"])
             for entry in record["imports"]}
    try:
        for entry in read_entries():
            if not isinstance(entry, dict):
                raise TypeError(f"an entry is not a JSON object ({type(entry).__name__})")
            if (entry["importId"], entry["chunk"], entry["pushedAt"]) not in known:
                record["imports"].append(entry)
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise _damaged(journal, error) from None


def _damaged(journal: Path, error: Exception) -> PigmentAuditError:
    """The error for a journal that cannot be read: it names the file and what to do, and
    nothing is pushed meanwhile (its entries' events would be pushed twice)."""
    reason = f"an entry has no {error.args[0]!r}" if isinstance(error, KeyError) else error
    return PigmentAuditError(
        f"{journal} cannot be read ({reason}). It holds the import entries (chunks Pigment "
        "accepted) that a run could not save to the day's import record, so nothing of the day "
        "is pushed until it can be read. If only its last line is cut short (the machine "
        "stopped while writing it), that chunk's ids are lost: remove the line and run again; "
        "the chunk's rows may then be pushed again, so check the configuration's import "
        "history.")


def save_record(storage: Storage, day: date, record: dict[str, Any]) -> None:
    """Write the import record, whole or not at all; then the journal it absorbed can go.

    Entries' ``eventIds`` may be lists or :class:`IdFile` s: both are written as lists,
    streamed (:func:`.record_io.write_json`).
    """
    with storage.writer(storage.import_record_key(day)) as handle:
        write_json(handle, record)
    unsaved_journal(storage, day).unlink(missing_ok=True)


def unsaved_journal(storage: Storage, day: date) -> Path:
    """Where accepted chunks go when the record cannot be saved (a full disk, say).

    On local scratch, apart from the storage, keyed by the storage's URL: the next run on this
    machine reads it with the record and pushes none of those events again.
    """
    name = hashlib.sha256(storage.url.encode()).hexdigest()[:16]
    return scratch_root() / UNSAVED_FOLDER / name / f"{day.isoformat()}.jsonl"


def _journal(storage: Storage, day: date, entry: dict[str, Any]) -> Path | None:
    path = unsaved_journal(storage, day)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as journal:
            write_json(journal, entry, indent=False)
            journal.write(b"\n")
            journal.flush()
            os.fsync(journal.fileno())
    except OSError:
        return None
    return path


def pushed_event_ids(record: dict[str, Any], configuration_id: str) -> set[str]:
    """Event ids already in Pigment for a configuration: all accepted, not-Failed imports."""
    return {
        event_id
        for entry in record["imports"]
        if entry["configurationId"] == configuration_id and entry.get("status") != "Failed"
        for event_id in entry["eventIds"]
    }


def pushed_id_set(record: dict[str, Any], configuration_id: str, work: Path) -> IdSet:
    """:func:`pushed_event_ids` in bounded memory (in SQLite past 200,000 ids)."""
    return IdSet(work, [entry["eventIds"] for entry in record["imports"]
                        if entry["configurationId"] == configuration_id
                        and entry.get("status") != "Failed"])


def chunk_id_file(chunk: Chunk, path: Path) -> IdFile:
    """The event ids of a chunk's records, in order, streamed into an id file."""
    ids = IdFile(path)
    event_ids = chunk.iter_event_ids()
    while batch := list(islice(event_ids, ID_BATCH)):
        ids.extend(batch)
    return ids


def summarize_report(status: dict[str, Any]) -> dict[str, Any]:
    """The part of an import status worth keeping: counts, errors, times."""
    detailed = status.get("detailedReport") or {}
    summary = detailed.get("summary") or {}
    skipped: dict[str, int] = {}  # why Pigment skipped rows, and how many (no samples: data)
    for block in detailed.get("impactedBlocks") or []:
        for item in (block or {}).get("skippedData") or []:
            reason = str((item or {}).get("reason") or "no reason given")
            skipped[reason] = skipped.get(reason, 0) + int((item or {}).get("count") or 0)
    return {
        "status": status.get("importStatus"),
        "blockType": detailed.get("blockType"),
        **{name: int(summary.get(name) or 0) for name in REPORT_COUNTS},
        "errors": [f"{error.get('name', '')}: {error.get('description', '')}"
                   for error in status.get("errorsDetails") or []],
        "skippedReasons": skipped,
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
    owner: str | None = None,
    lease_wait_seconds: float = 3600.0,
    lease_ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> ImportOutcome:
    """Push the day's events not yet in Pigment, then wait for every open import to finish.

    Holds the day's lease (see :mod:`.lease`) throughout, named after ``owner``: a second
    run of the day waits up to ``lease_wait_seconds`` for it, then fails naming the holder.
    """
    owner = owner or f"process {os.getpid()}"
    with hold_lease(storage, storage.lease_key(day), owner, log=log,
                    ttl_seconds=lease_ttl_seconds, wait_seconds=lease_wait_seconds) as lease, \
            scratch_dir(f"push-{day.isoformat()}") as work, \
            naming_scratch(work, f"write the chunks of {day}"):
        # Read only now: a run that held the lease before us may have pushed the day.
        record = read_record(storage, day, work)
        outcome = ImportOutcome(day=day,
                                record_path=storage.uri(storage.import_record_key(day)),
                                record=record, forced=force)
        skip = IdSet(work, []) if force else pushed_id_set(record, configuration_id, work)
        # The CSV stays open until every chunk is pushed: on local storage, chunks are byte
        # ranges of it. The id set closes whatever happens, a missing CSV included.
        with ExitStack() as open_csv:
            try:
                source = open_csv.enter_context(storage.open_read(storage.csv_key(day)))
                chunks = write_chunks(source, chunk_bytes, work / "chunks", skip_ids=skip,
                                      in_place=True)
                outcome.already_pushed = len(skip)
            finally:
                skip.close()
            for chunk in chunks:
                lease.check()
                _push_chunk(client, storage, day, configuration_id, chunk, len(chunks),
                            record, outcome, force=force, log=log, work=work)
                if on_chunk is not None:
                    on_chunk(chunk.bytes)
                chunk.discard()  # pushed, its ids on record: its disk space goes
        if not outcome.chunks:
            log.info(f"{day}: nothing new to push ({outcome.already_pushed:,} event(s) "
                     "already in Pigment).")
        _follow_open_imports(client, storage, day, record, configuration_id, outcome,
                             poll_seconds, poll_timeout_seconds, log)
        outcome.unverified = _unverified(record, configuration_id, work)
        for entry in record["imports"]:  # the id files go with the scratch folder
            if isinstance(entry.get("eventIds"), IdFile):
                entry["eventIds"] = RecordedIds(len(entry["eventIds"]))
    if outcome.failed:
        details = "; ".join(
            f"{import_id} ({', '.join(outcome.reports[import_id]['errors']) or 'no details'})"
            for import_id in outcome.failed
        )
        raise ImportFailedError(
            f"{day}: Pigment reported {len(outcome.failed)} import(s) as Failed: {details}. "
            f"Their events will be pushed again on the next run. Record: {outcome.record_path}"
        )
    return outcome


class RecordedIds(int):
    """In an :class:`ImportOutcome`'s record after the push: how many ids the entry lists
    (they are in the saved record; the scratch copy is gone)."""


def doubt(entry: dict[str, Any]) -> str | None:
    """Why an accepted import's rows are not known to be in Pigment, or None if they are (or
    if it is not finished, or Failed: its events are pushed again). Pigment no longer knows it
    (``StatusUnknown``); its answer was cut off (``AnswerLost``); its report does not add up to
    its rows (``Short``, List imports: a Metric import counts cells); Pigment skipped some of
    its rows (``Skipped``)."""
    status = entry.get("status")
    if status in (STATUS_UNKNOWN, ANSWER_LOST):
        return status
    report = entry.get("report") or {}
    if status != "Completed" or not report:
        return None
    if falls_short(report, import_rows(entry)):
        return SHORT
    return SKIPPED if int(report.get("skippedCount") or 0) else None


def falls_short(report: dict[str, Any], rows: int) -> bool:
    """Whether a List import's report accounts for other than its ``rows`` (a Metric import's
    counts are cells, which do not map to rows)."""
    return report.get("blockType") != "Metric" and accounted_for(report) != rows


def accounted_for(report: dict[str, Any]) -> int:
    """Rows a report accounts for: inserted, updated and skipped (a deletion is not a row)."""
    return sum(int(report.get(name) or 0) for name in REPORT_SUMS)


def skipped_reasons_text(reasons: dict[str, int]) -> str:
    """Pigment's reasons for skipping rows, as `` (reason: count; ...)``, or empty."""
    return (" (" + "; ".join(f"{reason}: {count}" for reason, count in reasons.items()) + ")"
            if reasons else "")


def import_rows(entry: dict[str, Any]) -> int:
    """The rows the entry's import carried: its own rows, unless ``pigment-audit-rezone``
    split the import's events between days (``importRows``, what the report counts)."""
    return int(entry.get("importRows") or entry["rows"])


def taken(report: dict[str, Any]) -> int:
    """Rows a report says Pigment took: inserted and updated."""
    return int(report.get("insertedCount") or 0) + int(report.get("updatedCount") or 0)


def unverified_key(entry: dict[str, Any]) -> str:
    """How an import is named where its rows are in doubt: its id, or its chunk and time."""
    return (entry.get("importId")
            or f"chunk {entry.get('chunk')} pushed at {entry.get('pushedAt')}")


def _unverified(record: dict[str, Any], configuration_id: str | None,
                work: Path) -> dict[str, dict[str, Any]]:
    """Imports of ``configuration_id`` (None: of any) in :func:`doubt` with an event in no
    Completed import whose rows are all in Pigment (a later forced re-push settles them)."""
    entries = [entry for entry in record["imports"]
               if configuration_id is None or entry.get("configurationId") == configuration_id]
    doubtful = [(entry, reason) for entry in entries if (reason := doubt(entry))]
    if not doubtful:
        return {}
    confirmed = IdSet(work / "confirmed", [entry.get("eventIds", []) for entry in entries
                                           if entry.get("status") == "Completed"
                                           and not doubt(entry)])
    try:
        return {unverified_key(entry): doubt_summary(entry, reason)
                for entry, reason in doubtful
                if not all(event_id in confirmed
                           for batch in id_batches(entry.get("eventIds", []))
                           for event_id in batch)}
    finally:
        confirmed.close()


def unverified_in(record: dict[str, Any],
                  configuration_id: str | None) -> dict[str, dict[str, Any]]:
    """:func:`_unverified` outside a push, in a scratch folder of its own (the import check's
    way when no push worked it out)."""
    with scratch_dir("check") as work:
        return _unverified(record, configuration_id, work)


def doubt_summary(entry: dict[str, Any], reason: str) -> dict[str, Any]:
    """What the import check and the metadata show of an import in :func:`doubt`."""
    report = entry.get("report") or {}
    return {"doubt": reason, "rows": entry["rows"], "importRows": import_rows(entry),
            "chunk": entry.get("chunk"),
            "pushedAt": entry.get("pushedAt"),
            # A Metric import's counts are cells: its rows taken cannot be told.
            "taken": (taken(report) if report and report.get("blockType") != "Metric"
                      else import_rows(entry)),
            "skipped": int(report.get("skippedCount") or 0),
            "errors": list(report.get("errors") or []),
            "skippedReasons": dict(report.get("skippedReasons") or {})}


def _push_chunk(client: PigmentClient, storage: Storage, day: date, configuration_id: str,
                chunk: Any, total: int, record: dict[str, Any], outcome: ImportOutcome, *,
                force: bool, log: Log, work: Path) -> None:
    """Push one chunk and record it; the record is saved before anything else can happen."""
    import_id: str | None
    try:
        import_id, status = client.push_csv(configuration_id, chunk), "Pushed"
    except PushAnswerLostError as error:
        import_id, status = None, ANSWER_LOST
        log.warning(f"{day}: chunk {chunk.index}/{total}: {error}")
    else:
        # Logged before the record is saved: if saving fails, the id is on record here.
        log.info(f"{day}: chunk {chunk.index}/{total} accepted by Pigment as import "
                 f"{import_id} ({chunk.rows:,} rows, {chunk.bytes:,} bytes).")
    entry = {
        "importId": import_id, "configurationId": configuration_id, "chunk": chunk.index,
        "rows": chunk.rows, "bytes": chunk.bytes,
        "pushedAt": datetime.now(timezone.utc).isoformat(), "status": status,
        "forced": force,
        "eventIds": chunk_id_file(chunk, work / "chunk-ids" / f"{len(record['imports'])}.ids"),
    }
    record["imports"].append(entry)
    try:
        save_record(storage, day, record)  # before anything else: never push it twice
    except OSError as error:
        journal = _journal(storage, day, entry)
        kept = (f"The chunk's {chunk.rows:,} event ids are kept in {journal}, which the next "
                "run on this machine reads: it will not push them again."
                if journal else
                f"They could not be kept anywhere either: before running the day again, "
                f"free space and check import {import_id} in Pigment, or the next run pushes "
                f"these {chunk.rows:,} rows again (Pigment lists keyed on id absorb that as "
                "updates).")
        raise StorageError(f"{day}: Pigment accepted chunk {chunk.index}/{total} as import "
                           f"{import_id}, but its record could not be saved: {error} {kept}"
                           ) from error
    outcome.chunks += 1
    outcome.rows_pushed += chunk.rows
    if import_id is None:
        outcome.answer_lost.append(_lost_summary(day, entry))
    else:
        outcome.import_ids.append(import_id)


def _follow_open_imports(client: PigmentClient, storage: Storage, day: date,
                         record: dict[str, Any], configuration_id: str,
                         outcome: ImportOutcome, poll_seconds: float,
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
                save_record(storage, day, record)
                log.warning(f"Import {import_id}: Pigment has no status for it any more (404); "
                            "recorded as StatusUnknown, its events count as pushed.")
                continue
            report = summarize_report(status)
            entry["status"] = report["status"]
            entry["report"] = report
            save_record(storage, day, record)
            log.info(f"Import {import_id}: {report['status']}, "
                     + ", ".join(f"{name} {report[name]}" for name in REPORT_COUNTS))
            if import_id not in outcome.import_ids:
                outcome.imports_followed.append(import_id)  # an earlier run left it open
            if report["status"] == "Failed":
                outcome.failed.append(import_id)
        if import_id in outcome.import_ids or import_id in outcome.imports_followed:
            report = entry.get("report") or {}
            outcome.reports[import_id] = report
            for name in REPORT_COUNTS:
                outcome.totals[name] += int(report.get(name) or 0)


def _lost_summary(day: date, entry: dict[str, Any]) -> dict[str, Any]:
    return {"day": day.isoformat(), "chunk": entry["chunk"], "rows": entry["rows"],
            "pushedAt": entry["pushedAt"]}
