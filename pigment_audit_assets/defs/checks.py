"""Asset checks: computed from what each step saw while writing its files, or from the files.

The assets check what their step wrote without reading it back (issue 11: reading the raw file
and the CSV again cost the assets more than the CSV itself): the raw step counts the lines it
wrote and knows the first and last event time of each file (its spool keys events by id, so an
id cannot repeat in a file, and files each event under its day, except events kept from the
file's previous version, which are compared with the day as they are merged); the CSV step
keeps a digest of the raw events' ids as it reads them and one of the id cells of the rows it
writes, in order. When those figures are missing, or show a problem, the check reads the files
(:func:`check_raw_file`, :func:`check_csv_rows`), for the figures in its metadata.

Blocking checks stop a bad file from flowing on to the next asset in the same run; the
rejected-events check only warns, so good events still flow.

Every check gives each day its own result, on that day's partition, also in a ranged run: the
specs carry the assets' partitions (a preview feature of Dagster 1.13, safe here because the
project pins one exact Dagster release), and :func:`day_evaluations` emits one evaluation per
day, since ``AssetCheckResult`` only knows the partition of a single-partition run. The
functions that read files are small helpers, so where files come from can change alone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import orjson

# Not exported by dagster: the link from a check result to the materialization it is about.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from ..core.collect import DayFile, classify
from ..core.days import day_start, epoch_microseconds
from ..core.imports import (
    ANSWER_LOST,
    SHORT,
    SKIPPED,
    STATUS_UNKNOWN,
    ImportOutcome,
    accounted_for,
    falls_short,
    skipped_reasons_text,
    unverified_in,
)
from ..core.storage import Storage
from ..core.table import CsvSummary

RAW_IDS_AND_DAYS = "event_ids_unique_and_in_day"
RAW_REJECTED = "no_rejected_events"
CSV_ROWS = "one_csv_row_per_event"
IMPORT_REPORTS = "import_reports_cover_rows"

_DESCRIPTIONS = {
    RAW_IDS_AND_DAYS: ("raw_audit_events", True,
                       "Every event id appears once in the day's raw file, and every event "
                       "happened on that day (in the partitions' zone). One result per day."),
    RAW_REJECTED: ("raw_audit_events", False,
                   "Warns when some events of the day could not be placed (no id, no parseable "
                   "`eventTimestamp`, not an object). One result per day."),
    CSV_ROWS: ("audit_events_csv", True,
               "The day's CSV holds exactly one row per raw event, same ids, same order. One "
               "result per day."),
    IMPORT_REPORTS: ("audit_events_import", True,
                     "Pigment's report of each import of the day accounts for every row it "
                     "carried: inserted + updated + skipped = rows. Warns (could not be "
                     "verified) when a report cannot be read. One result per day."),
}


def _specs(names: Iterable[str], partitions_def: dg.PartitionsDefinition | None,
           key_prefix: Sequence[str] = ()) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=dg.AssetKey([*key_prefix, _DESCRIPTIONS[name][0]]),
                              blocking=_DESCRIPTIONS[name][1],
                              description=_DESCRIPTIONS[name][2], partitions_def=partitions_def)
            for name in names]


def raw_check_specs(partitions_def: dg.PartitionsDefinition | None,
                    key_prefix: Sequence[str] = ()) -> list[dg.AssetCheckSpec]:
    """The raw asset's checks, per partition of ``partitions_def``."""
    return _specs((RAW_IDS_AND_DAYS, RAW_REJECTED), partitions_def, key_prefix)


def csv_check_specs(partitions_def: dg.PartitionsDefinition | None,
                    key_prefix: Sequence[str] = ()) -> list[dg.AssetCheckSpec]:
    """The CSV asset's check, per partition of ``partitions_def``."""
    return _specs((CSV_ROWS,), partitions_def, key_prefix)


def import_check_specs(partitions_def: dg.PartitionsDefinition | None,
                    key_prefix: Sequence[str] = ()) -> list[dg.AssetCheckSpec]:
    """The import asset's check, per partition of ``partitions_def``."""
    return _specs((IMPORT_REPORTS,), partitions_def, key_prefix)


# The specs without partitions: what the checks are, for whoever reads them without assets.
RAW_CHECK_SPECS = raw_check_specs(None)
CSV_CHECK_SPECS = csv_check_specs(None)
IMPORT_CHECK_SPECS = import_check_specs(None)


def day_evaluations(context: dg.AssetExecutionContext, check_name: str,
                    results: dict[date, dg.AssetCheckResult]) -> Iterator[Any]:
    """What the asset yields for one check over the run's days: each day's own evaluation.

    ``results`` are the results of the check ``check_name`` by day. Yields the check's output
    once (Dagster waits for it), then per day an ``AssetCheckEvaluation`` on that day's
    partition, pointing at the day's materialization. A failed blocking ERROR result still
    fails the step, as a returned ``AssetCheckResult`` would.
    """
    if not results:
        return
    key = dg.AssetCheckKey(context.asset_key, check_name)
    spec = context.assets_def.get_spec_for_check_key(key)
    yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
    for day, result in results.items():
        partition = day.isoformat()
        yield dg.AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=result.passed,
            metadata={"day": partition, **result.metadata}, severity=result.severity,
            description=result.description, blocking=spec.blocking,
            partition=partition if spec.partitions_def is not None else None,
            target_materialization_data=_materialization(context, partition),
        )


def _materialization(context: dg.AssetExecutionContext,
                     partition: str) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The day's latest materialization, which the result is about (as Dagster links it)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition]),
        limit=1).records
    if not records:
        return None
    record = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.event_log_entry.run_id,
        timestamp=record.timestamp)


# --- reading the files (small helpers: the only places that open them) ----------------------

def _raw_lines(storage: Storage, day: date) -> Iterator[bytes]:
    """The raw file's lines, streamed."""
    with storage.open_read(storage.raw_key(day)) as raw:
        yield from raw


def _csv_records(storage: Storage, day: date) -> Iterator[list[str]]:
    """The CSV's records, streamed."""
    csv.field_size_limit(2**31 - 1)  # cells past csv's default 131,072 characters
    with storage.open_read(storage.csv_key(day)) as binary, \
            io.TextIOWrapper(binary, encoding="utf-8", newline="") as handle:
        yield from csv.reader(handle)


# --- the checks, one day each ---------------------------------------------------------------

def check_raw_file(storage: Storage, day: date, zone: ZoneInfo) -> dg.AssetCheckResult:
    """Ids unique within the day's raw file, and every event on the file's day."""
    problems: list[str] = []
    seen: set[str] = set()
    number = 0
    for number, line in enumerate(_raw_lines(storage, day), start=1):
        try:
            placed = classify(orjson.loads(line), zone)
        except orjson.JSONDecodeError:
            placed = "not JSON"
        if isinstance(placed, str):
            problems.append(f"line {number}: {placed}")
            continue
        event_id, event_day, _ = placed
        if event_id in seen:
            problems.append(f"line {number}: id {event_id} repeated")
        if event_day != day:
            problems.append(f"line {number}: event of {event_day}")
        seen.add(event_id)
    return dg.AssetCheckResult(
        check_name=RAW_IDS_AND_DAYS, passed=not problems,
        description=f"{len(problems)} problem(s) in the raw file of {day}" if problems else None,
        metadata={"events_checked": number, "problems": len(problems),
                  "first_problems": "\n".join(problems[:20]) or "none"},
    )


def check_raw_written(storage: Storage, day_file: DayFile,
                      zone: ZoneInfo) -> dg.AssetCheckResult:
    """The raw check from what the scan saw while writing the day's file (``day_file``).

    Ids are unique because the scan's spool keys events by id. Every event is in the day when
    the first and last event times lie in the day's window and no event kept from the file's
    previous version was of another day; every event was written when the lines written are
    the events counted. Without those figures (a file the scan left as it was), or on a
    problem, the file is read (:func:`check_raw_file`): its metadata then names each problem.
    """
    day = day_file.day
    if day_file.lines_written is None:
        return check_raw_file(storage, day, zone)
    start = epoch_microseconds(day_start(day, zone))
    end = epoch_microseconds(day_start(day + timedelta(days=1), zone))
    in_day = day_file.events == 0 or (
        day_file.first_at is not None and day_file.last_at is not None
        and start <= day_file.first_at and day_file.last_at < end)
    if in_day and not day_file.misplaced and day_file.lines_written == day_file.events:
        return dg.AssetCheckResult(
            check_name=RAW_IDS_AND_DAYS, passed=True,
            metadata={"events_checked": day_file.events, "problems": 0,
                      "first_problems": "none", "checked": "while writing"})
    return check_raw_file(storage, day, zone)


def check_rejected(day_file: DayFile) -> dg.AssetCheckResult:
    """A warning when the day has rejected events, saying where they are."""
    return dg.AssetCheckResult(
        check_name=RAW_REJECTED, passed=not day_file.rejected,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{day_file.rejected} event(s) of {day_file.day} could not be placed; "
                     f"see {day_file.rejected_path}") if day_file.rejected else None,
        metadata={"rejected_events": day_file.rejected,
                  "file": str(day_file.rejected_path) if day_file.rejected else "none"},
    )


def _raw_ids(storage: Storage, day: date) -> list[str]:
    ids = []
    for line in _raw_lines(storage, day):
        if line.strip():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                item = None
            ids.append(str(item.get("id")) if isinstance(item, dict) else "")
    return ids


def _csv_ids(storage: Storage, day: date) -> list[str]:
    records = _csv_records(storage, day)
    header = next(records, None)
    if header is None:
        return []
    rows = records
    index = header.index("id") if "id" in header else None
    return [row[index] if index is not None and index < len(row) else "" for row in rows]


def check_csv_rows(storage: Storage, day: date) -> dg.AssetCheckResult:
    """The day's CSV has one record per raw event: same count, same ids, same order."""
    ids, rows = _raw_ids(storage, day), _csv_ids(storage, day)
    metadata: dict[str, Any] = {"raw_events": len(ids), "csv_rows": len(rows)}
    if ids != rows:
        missing, extra = sorted(set(ids) - set(rows)), sorted(set(rows) - set(ids))
        metadata.update({"ids_missing_from_csv": missing[:10], "ids_not_in_raw": extra[:10]})
    return dg.AssetCheckResult(
        check_name=CSV_ROWS, passed=ids == rows,
        description=None if ids == rows else f"The CSV and the raw file of {day} differ",
        metadata=metadata)


def check_csv_written(storage: Storage, day: date, summary: CsvSummary) -> dg.AssetCheckResult:
    """The CSV check from what the CSV step saw while writing (``summary``): as many rows as
    raw events read, and the same digest of ids in order on both sides (the raw events' ids
    as read, the id cells of the rows as written). Without those figures, or when they
    differ, the files are read (:func:`check_csv_rows`), for the ids that differ."""
    if summary.raw_events is None or summary.raw_ids_digest is None:
        return check_csv_rows(storage, day)
    if summary.raw_events == summary.rows and summary.raw_ids_digest == summary.csv_ids_digest:
        return dg.AssetCheckResult(
            check_name=CSV_ROWS, passed=True,
            metadata={"raw_events": summary.raw_events, "csv_rows": summary.rows,
                      "checked": "while writing"})
    return check_csv_rows(storage, day)


def check_import_reports(outcome: ImportOutcome,
                         configuration_id: str | None = None) -> dg.AssetCheckResult:
    """Every import of the day accepted by Pigment, this run's and earlier runs', has its rows
    in Pigment: its report's inserted + updated + skipped equals the rows it carried, and
    Pigment skipped none of them.

    Compared for List imports (and reports without a block type); a Metric import counts
    cells, which do not map to rows, so only its skipped cells are. An earlier import in doubt
    stays in doubt until a Completed import without doubt holds all its events (a forced full
    re-push of the day): a re-run with nothing new to push does not turn the check green.

    Fails (ERROR) when an import fell short. Warns (WARN, not passed) when Pigment skipped
    rows, and when rows cannot be verified: a push whose answer was cut off after Pigment's
    200 (no import id, so no report), and an import whose status Pigment no longer knows
    (``StatusUnknown``).
    """
    entries = [entry for entry in outcome.record["imports"]
               if configuration_id is None or entry.get("configurationId") == configuration_id]
    rows_by_id = {entry["importId"]: entry["rows"] for entry in entries if entry["importId"]}
    short: dict[str, dict[str, int]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for import_id, report in outcome.reports.items():  # this run's: as Pigment reported them
        rows = rows_by_id.get(import_id, -1)
        if falls_short(report, rows):
            short[import_id] = {"rows_pushed": rows, "accounted_for": accounted_for(report)}
        if int(report.get("skippedCount") or 0):
            skipped[import_id] = {"rows": rows, "skipped": int(report["skippedCount"]),
                                  "reasons": dict(report.get("skippedReasons") or {}),
                                  "errors": list(report.get("errors") or [])}
    doubtful = (outcome.unverified if outcome.unverified is not None
                else unverified_in(outcome.record, configuration_id))
    lost = list(outcome.answer_lost)
    unknown: dict[str, int] = {}
    for key, item in doubtful.items():  # the day's earlier imports still in doubt too
        if item["doubt"] == SHORT and key not in short:
            short[key] = {"rows_pushed": item["importRows"],
                          "accounted_for": item["taken"] + item["skipped"]}
        elif item["doubt"] == SKIPPED and key not in skipped:
            skipped[key] = {"rows": item["importRows"], "skipped": item["skipped"],
                            "reasons": item["skippedReasons"], "errors": item["errors"]}
        elif item["doubt"] == STATUS_UNKNOWN:
            unknown[key] = item["rows"]
        elif item["doubt"] == ANSWER_LOST and not any(
                (earlier["chunk"], earlier["pushedAt"]) == (item["chunk"], item["pushedAt"])
                for earlier in lost):
            lost.append({"day": outcome.day.isoformat(), "chunk": item["chunk"],
                         "rows": item["rows"], "pushedAt": item["pushedAt"]})
    problems = []
    if short:
        problems.append("imports whose report falls short: " + ", ".join(short)
                        + "; force a full re-push of the day once Pigment's side is checked")
    if skipped:
        problems.append(
            "Pigment skipped rows, so their events are not in Pigment: "
            + ", ".join(f"import {import_id} skipped {item['skipped']} of {item['rows']} rows"
                        + skipped_reasons_text(item["reasons"])
                        for import_id, item in skipped.items())
            + "; fix those rows or the import configuration, then force a full re-push of "
              "the day")
    if unknown:
        problems.append("could not be verified: Pigment no longer knows the status of "
                        + ", ".join(f"import {import_id} ({rows} rows)"
                                    for import_id, rows in unknown.items())
                        + "; force a full re-push of the day to verify its rows")
    if lost:
        problems.append("could not be verified: pushes accepted (HTTP 200) whose import id "
                        "was cut off, so their report cannot be read; check them in Pigment: "
                        + ", ".join(f"{item['day']} chunk {item['chunk']} ({item['rows']} rows)"
                                    for item in lost))
    return dg.AssetCheckResult(
        check_name=IMPORT_REPORTS, passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR if short else dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or None,
        metadata={"imports_checked": len(outcome.reports), "short": short,
                  "skipped": dg.MetadataValue.json(skipped),
                  "not_verified": dg.MetadataValue.json(
                      {**{import_id: STATUS_UNKNOWN for import_id in unknown},
                       **{f"chunk {item['chunk']}": ANSWER_LOST for item in lost}}),
                  "answers_lost": dg.MetadataValue.json(lost)},
    )
