"""Rejected events and asset checks: visible, warning-only for rejects, blocking for bad files."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import dagster as dg
import orjson

from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.imports import ImportOutcome, save_record
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets.defs import checks
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import ASSETS, DAY, resource_settings
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

UTC = parse_zone("UTC")


def resource_for(stand_in: PigmentStandIn, root: Path) -> PigmentResource:
    return PigmentResource(**resource_settings(stand_in, root, requests_per_window=10_000,
                                               window_seconds=1.0))


def evaluations(result: dg.ExecuteInJobResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def test_rejected_events_are_filed_counted_and_warned_without_blocking(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 80, seed=4))
    noon = datetime.combine(DAY, time(12), tzinfo=timezone.utc)
    stand_in.add_events([(42, noon), ({"id": "no-ts", "ingestionTimestamp": "x"}, noon),
                         ({"eventTimestamp": noon.isoformat()}, noon)])
    result = dg.materialize(ASSETS, resources={"pigment": resource_for(stand_in, tmp_path)},
                            partition_key=DAY.isoformat())
    assert result.success
    storage = LocalStorage(tmp_path)
    path = storage.rejected_path(DAY)
    assert "rejected" in path.name and DAY.isoformat() in path.name
    rejects = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted(item["reason"] for item in rejects) == [
        "no id", "no parseable eventTimestamp", "not a JSON object (int)"]
    meta = {m.partition: m.metadata for m in
            result.asset_materializations_for_node("raw_audit_events")}[DAY.isoformat()]
    assert meta["rejected_events"].value == 3
    assert meta["rejected_path"].value == str(path)
    found = evaluations(result)
    rejected = found["no_rejected_events"]
    assert not rejected.passed and rejected.severity == dg.AssetCheckSeverity.WARN
    assert rejected.metadata["rejected_events"].value == 3
    assert (rejected.partition, rejected.metadata["day"].value) == (DAY.isoformat(),) * 2
    spec = next(spec for spec in checks.RAW_CHECK_SPECS if spec.name == "no_rejected_events")
    assert not spec.blocking
    # Every good event still landed, in the CSV and in Pigment.
    assert len(stand_in.pushed_rows()) == 80
    assert found["one_csv_row_per_event"].passed and found["import_reports_cover_rows"].passed
    assert {m.partition for m in result.asset_materializations_for_node("audit_events_import")
            } == {DAY.isoformat()}


def test_the_blocking_checks_are_blocking() -> None:
    blocking = {spec.name for spec in
                [*checks.RAW_CHECK_SPECS, *checks.CSV_CHECK_SPECS, *checks.IMPORT_CHECK_SPECS]
                if spec.blocking}
    assert blocking == {"event_ids_unique_and_in_day", "one_csv_row_per_event",
                        "import_reports_cover_rows"}


def write_raw(storage: LocalStorage, events: list[dict]) -> None:
    path = storage.raw_path(DAY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))


def test_a_raw_file_with_a_duplicate_id_or_a_wrong_day_fails_the_raw_check(
        tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = synthetic_events(DAY, 5, seed=1)
    write_raw(storage, events)
    assert checks.check_raw_file(storage, DAY, UTC).passed
    write_raw(storage, [*events, events[2]])
    result = checks.check_raw_file(storage, DAY, UTC)
    assert not result.passed and f"id {events[2]['id']} repeated" in \
        result.metadata["first_problems"].value
    other_day = synthetic_events(DAY - timedelta(days=1), 1, seed=1)
    write_raw(storage, [*events, *other_day])
    result = checks.check_raw_file(storage, DAY, UTC)
    assert not result.passed
    assert f"event of {DAY - timedelta(days=1)}" in result.metadata["first_problems"].value
    # A line that is not JSON is a problem reported, not a crash.
    storage.raw_path(DAY).write_bytes(orjson.dumps(events[0]) + b"\n{cut\n")
    assert not checks.check_raw_file(storage, DAY, UTC).passed


def test_a_csv_that_lost_or_changed_rows_fails_the_csv_check(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = synthetic_events(DAY, 6, seed=2)
    write_raw(storage, events)
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    assert checks.check_csv_rows(storage, DAY).passed
    text = storage.csv_path(DAY).read_text(encoding="utf-8")
    storage.csv_path(DAY).write_text(text.replace(events[3]["id"], "forged-id"),
                                     encoding="utf-8")
    result = checks.check_csv_rows(storage, DAY)
    assert not result.passed and DAY.isoformat() in (result.description or "")
    assert result.metadata["ids_missing_from_csv"].value == [events[3]["id"]]
    # A raw file with a duplicate id flows into a CSV with both rows: the raw check catches it.
    write_raw(storage, [*events, events[0]])
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    assert checks.check_csv_rows(storage, DAY).passed
    assert not checks.check_raw_file(storage, DAY, UTC).passed


def test_an_import_whose_report_falls_short_is_named(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    record = {"day": DAY.isoformat(), "imports": [
        {"importId": "imp-ok", "configurationId": "c", "rows": 10, "eventIds": []},
        {"importId": "imp-short", "configurationId": "c", "rows": 10, "eventIds": []}]}
    save_record(storage, DAY, record)
    outcome = ImportOutcome(day=DAY, record_path=storage.uri(storage.import_record_key(DAY)),
                            record=record, reports={
        "imp-ok": {"insertedCount": 7, "updatedCount": 3, "skippedCount": 0},
        "imp-short": {"insertedCount": 7, "updatedCount": 0, "skippedCount": 1}})
    result = checks.check_import_reports(outcome)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "imp-short" in (result.description or "") and "imp-ok" not in result.description
    assert result.metadata["short"].value == {
        "imp-short": {"rows_pushed": 10, "accounted_for": 8}}


def test_a_failed_blocking_check_stops_the_downstream_assets(stand_in: PigmentStandIn,
                                                             tmp_path: Path) -> None:
    """A raw file already holding an event of another day: the scan keeps it, the check fails."""
    stand_in.add_events(synthetic_events(DAY, 30, seed=9))
    storage = LocalStorage(tmp_path)
    write_raw(storage, synthetic_events(DAY - timedelta(days=1), 1, seed=9))
    result = dg.materialize(ASSETS, resources={"pigment": resource_for(stand_in, tmp_path)},
                            partition_key=DAY.isoformat(), raise_on_error=False)
    found = evaluations(result)
    assert not found["event_ids_unique_and_in_day"].passed
    assert found["event_ids_unique_and_in_day"].severity == dg.AssetCheckSeverity.ERROR
    assert not result.success
    assert not storage.csv_path(DAY).exists()  # the CSV step never ran
    assert stand_in.request_counts["push"] == 0
    assert not result.asset_materializations_for_node("audit_events_csv")
