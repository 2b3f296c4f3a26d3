"""Turn the core's results into the metadata a user reads in the Dagster UI. No secrets here."""

from __future__ import annotations

import csv
import io
from contextlib import AbstractContextManager
from itertools import islice
from typing import Any, BinaryIO

import dagster as dg

from ..core.collect import DayFile, ScanResult
from ..core.imports import ImportOutcome
from ..core.table import CsvSummary

PREVIEW_ROWS = 5


def raw_day_metadata(day_file: DayFile) -> dict[str, Any]:
    """One day's raw file."""
    return {
        "dagster/row_count": day_file.events,
        "path": dg.MetadataValue.path(str(day_file.path)),
        "bytes": day_file.bytes,
        "events_by_type": dg.MetadataValue.json(dict(day_file.event_types.most_common())),
        "first_event_at": day_file.first_event_at or "none",
        "last_event_at": day_file.last_event_at or "none",
        "changed": day_file.changed,
        "events_added": day_file.added,
        "events_kept_from_before": day_file.kept_from_before,
        "rejected_events": day_file.rejected,
        "rejected_path": str(day_file.rejected_path) if day_file.rejected_path else "none",
        # Events of days no run can write any more (before the first partition, past 180 days),
        # filed in this day's rejects: by their own day.
        "events_set_aside": dg.MetadataValue.json(day_file.set_aside),
        "empty_day": day_file.events == 0,
        # Its first file came from a daily scan's late events: see the materialization's text.
        "first_file_from_late_events": day_file.first_file_from_late_events,
    }


def scan_summary(scan: ScanResult) -> str:
    """The run's one scan, over all its days, as a line for the run's logs.

    Not metadata: a day's materialization carries only that day's figures, and these are the
    run's (a ranged run scans once for all its days).
    """
    changed = [str(day) for day, day_file in sorted(scan.days.items()) if day_file.changed]
    return (f"This run's audit scan, for its {len(scan.days)} day(s): {scan.audit_requests} "
            f"API request(s), {scan.pages} page(s), {scan.events_seen:,} event(s) seen, "
            f"{scan.duplicates:,} duplicate(s) dropped, {scan.outside_range:,} outside the "
            f"run's days, {scan.rejected:,} rejected; days whose events changed: "
            f"{', '.join(changed) or 'none'}"
            + (f"; ingested since {scan.since:%Y-%m-%d %H:%M:%S}Z, watermark now "
               f"{scan.watermark:%Y-%m-%d %H:%M:%S}Z" if scan.watermark and scan.since else "")
            + ".")


def csv_day_metadata(summary: CsvSummary,
                     preview_source: AbstractContextManager[BinaryIO] | None = None
                     ) -> dict[str, Any]:
    """One day's CSV, with a preview of its first rows and columns (read back with the csv
    module from ``preview_source``: the stored CSV, opened for reading).

    Not with pandas, which this module imported for that alone: 0.5 s of every Dagster
    process's start-up on this project's machines (``benchmarks/bench_dagster.py``).
    """
    metadata: dict[str, Any] = {
        "dagster/row_count": summary.rows,
        "path": dg.MetadataValue.path(str(summary.path)),
        "bytes": summary.bytes,
        "columns": len(summary.columns),
        "column_names": dg.MetadataValue.json(summary.columns),
        "collisions": summary.collisions,
        "collided_columns": dg.MetadataValue.json(dict(summary.collided_columns)),
        "empty_day": summary.rows == 0,
    }
    if summary.rows and preview_source is not None:
        csv.field_size_limit(2**31 - 1)  # cells past csv's default 131,072 characters
        with preview_source as binary, \
                io.TextIOWrapper(binary, encoding="utf-8", newline="") as handle:
            records = list(islice(csv.reader(handle), PREVIEW_ROWS + 1))
        width = min(8, len(records[0]))
        metadata["preview"] = dg.MetadataValue.md(_markdown_table(
            records[0][:width], [(row + [""] * width)[:width] for row in records[1:]]))
    return metadata


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")[:60]

    lines = ["| " + " | ".join(cell(name) for name in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def import_day_metadata(outcome: ImportOutcome) -> dict[str, Any]:
    """One day's push: import ids, rows, Pigment's report.

    ``dagster/row_count`` is the day's events in Pigment: those pushed by earlier runs and
    still counted as pushed, plus those this run pushed, less the rows Pigment's reports say it
    skipped or did not account for (the import check names those imports).
    """
    return {
        "dagster/row_count": max(0, outcome.already_pushed + outcome.rows_pushed
                                 - outcome.rows_not_in_pigment()),
        "import_ids": dg.MetadataValue.json(outcome.import_ids),
        "imports_followed": dg.MetadataValue.json(outcome.imports_followed),
        "chunks_pushed": outcome.chunks,
        "rows_pushed": outcome.rows_pushed,
        "events_already_in_pigment": outcome.already_pushed,
        "nothing_to_push": outcome.chunks == 0,
        "forced_full_repush": outcome.forced,
        "inserted": outcome.totals["insertedCount"],
        "updated": outcome.totals["updatedCount"],
        "deleted": outcome.totals["deletedCount"],
        "skipped": outcome.totals["skippedCount"],
        "errors": dg.MetadataValue.json(
            {import_id: report.get("errors", []) for import_id, report in outcome.reports.items()
             if report.get("errors")}),
        "answers_lost": dg.MetadataValue.json(outcome.answer_lost),
        "import_record": dg.MetadataValue.path(str(outcome.record_path)),
    }
