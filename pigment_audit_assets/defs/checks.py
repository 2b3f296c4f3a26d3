"""Asset checks: each reads the files again on its own, so a bug in writing them shows.

Blocking checks stop a bad file from flowing on to the next asset in the same run; the
rejected-events check only warns, so good events still flow.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import date
from zoneinfo import ZoneInfo

import dagster as dg
import orjson

from ..core.collect import DayFile, classify
from ..core.imports import ImportOutcome
from ..core.storage import Storage

RAW_IDS_AND_DAYS = "event_ids_unique_and_in_day"
RAW_REJECTED = "no_rejected_events"
CSV_ROWS = "one_csv_row_per_event"
IMPORT_REPORTS = "import_reports_cover_rows"

RAW_CHECK_SPECS = [
    dg.AssetCheckSpec(RAW_IDS_AND_DAYS, asset="raw_audit_events", blocking=True,
                      description="Every event id appears once, and every event happened on "
                                  "its file's day (in the partitions' zone)."),
    dg.AssetCheckSpec(RAW_REJECTED, asset="raw_audit_events",
                      description="Warns when some events could not be placed in a day (no "
                                  "id, no parseable eventTimestamp, not an object)."),
]
CSV_CHECK_SPECS = [
    dg.AssetCheckSpec(CSV_ROWS, asset="audit_events_csv", blocking=True,
                      description="The CSV holds exactly one row per raw event."),
]
IMPORT_CHECK_SPECS = [
    dg.AssetCheckSpec(IMPORT_REPORTS, asset="audit_events_import", blocking=True,
                      description="Pigment's report of every import of the run accounts for "
                                  "every row pushed: inserted + updated + skipped = rows."),
]


def check_raw_files(storage: Storage, days: Iterable[date], zone: ZoneInfo) -> dg.AssetCheckResult:
    """Ids unique within each raw file, and every event on its file's day."""
    problems: list[str] = []
    checked = 0
    for day in days:
        seen: set[str] = set()
        with open(storage.raw_path(day), "rb") as raw:
            for number, line in enumerate(raw, start=1):
                checked += 1
                try:
                    placed = classify(orjson.loads(line), zone)
                except orjson.JSONDecodeError:
                    placed = "not JSON"
                if isinstance(placed, str):
                    problems.append(f"{day} line {number}: {placed}")
                    continue
                event_id, event_day, _ = placed
                if event_id in seen:
                    problems.append(f"{day} line {number}: id {event_id} repeated")
                if event_day != day:
                    problems.append(f"{day} line {number}: event of {event_day}")
                seen.add(event_id)
    return dg.AssetCheckResult(
        check_name=RAW_IDS_AND_DAYS, passed=not problems,
        metadata={"events_checked": checked, "problems": len(problems),
                  "first_problems": "\n".join(problems[:20]) or "none"},
    )


def check_rejected(day_files: Iterable[DayFile]) -> dg.AssetCheckResult:
    """A warning listing the days with rejected events and where they are."""
    rejected = {str(day.day): day.rejected for day in day_files if day.rejected}
    paths = [str(day.rejected_path) for day in day_files if day.rejected]
    return dg.AssetCheckResult(
        check_name=RAW_REJECTED, passed=not rejected, severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected_by_day": rejected, "files": "\n".join(paths) or "none"},
    )


def _raw_ids(storage: Storage, day: date) -> list[str]:
    ids = []
    with open(storage.raw_path(day), "rb") as raw:
        for line in raw:
            if line.strip():
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError:
                    item = None
                ids.append(str(item.get("id")) if isinstance(item, dict) else "")
    return ids


def _csv_ids(storage: Storage, day: date) -> list[str]:
    with open(storage.csv_path(day), newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        index = header.index("id") if "id" in header else None
        return [row[index] if index is not None and index < len(row) else "" for row in reader]


def check_csv_rows(storage: Storage, days: Iterable[date]) -> dg.AssetCheckResult:
    """The CSV of each day has one record per raw event: same count, same ids, same order."""
    mismatches = {}
    for day in days:
        ids, rows = _raw_ids(storage, day), _csv_ids(storage, day)
        if ids != rows:
            missing, extra = sorted(set(ids) - set(rows)), sorted(set(rows) - set(ids))
            mismatches[str(day)] = {"raw_events": len(ids), "csv_rows": len(rows),
                                    "ids_missing_from_csv": missing[:10],
                                    "ids_not_in_raw": extra[:10]}
    return dg.AssetCheckResult(
        check_name=CSV_ROWS, passed=not mismatches,
        description=("CSV and raw file differ on " + ", ".join(mismatches)) if mismatches
        else None,
        metadata={"mismatches": mismatches})


def check_import_reports(outcomes: Iterable[ImportOutcome]) -> dg.AssetCheckResult:
    """Each import's inserted + updated + skipped equals the rows it carried.

    Compared for List imports (and reports without a block type); a Metric import counts
    cells, which do not map to rows, so it is not compared.

    A push whose answer was cut off after Pigment's 200 has no import id, so no report to
    read: it is listed, and the check warns (severity WARN) unless an import fell short.
    """
    short: dict[str, dict[str, int]] = {}
    lost: list[dict[str, object]] = []
    imports = 0
    for outcome in outcomes:
        lost.extend(outcome.answer_lost)
        record = orjson.loads(outcome.record_path.read_bytes()) if outcome.record_path.exists() \
            else {"imports": []}
        rows_by_id = {entry["importId"]: entry["rows"] for entry in record["imports"]}
        for import_id, report in outcome.reports.items():
            imports += 1
            if report.get("blockType") == "Metric":
                continue  # a metric's counts are cells, not rows: nothing to compare them to
            accounted = sum(int(report.get(name) or 0)
                            for name in ("insertedCount", "updatedCount", "skippedCount"))
            if accounted != rows_by_id.get(import_id):
                short[import_id] = {"rows_pushed": rows_by_id.get(import_id, -1),
                                    "accounted_for": accounted}
    problems = []
    if short:
        problems.append("imports whose report falls short: " + ", ".join(short))
    if lost:
        problems.append("pushes accepted (HTTP 200) whose import id was cut off, so their "
                        "report cannot be read; check them in Pigment: " + ", ".join(
                            f"{item['day']} chunk {item['chunk']} ({item['rows']} rows)"
                            for item in lost))
    return dg.AssetCheckResult(
        check_name=IMPORT_REPORTS, passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR if short else dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or None,
        metadata={"imports_checked": imports, "short": short,
                  "answers_lost": dg.MetadataValue.json(lost)},
    )
