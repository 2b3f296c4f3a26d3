"""The three assets, materialized for real with ``dagster.materialize`` over the stand-in."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs.assets import FORCE_REPUSH_TAG
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    ASSETS,
    AUDIT_KEY,
    DAY,
    IMPORT_KEY,
    days_before,
    resource_settings,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events


def run(resource: PigmentResource, *, day: str | None = None, first: str | None = None,
        last: str | None = None, tags: dict[str, str] | None = None,
        run_config: dict[str, Any] | None = None, raise_on_error: bool = True,
        instance: dg.DagsterInstance | None = None) -> dg.ExecuteInJobResult:
    """Materialize the three assets for a day, or a range as one run."""
    all_tags = dict(tags or {})
    if first and last:
        all_tags.update({ASSET_PARTITION_RANGE_START_TAG: first,
                         ASSET_PARTITION_RANGE_END_TAG: last})
    return dg.materialize(ASSETS, resources={"pigment": resource}, partition_key=day,
                          tags=all_tags, run_config=run_config, raise_on_error=raise_on_error,
                          instance=instance)


def by_partition(result: dg.ExecuteInJobResult, node: str) -> dict[str, dict[str, Any]]:
    return {m.partition: {key: getattr(value, "value", value) for key, value in m.metadata.items()}
            for m in result.asset_materializations_for_node(node)}


def csv_ids(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


@pytest.fixture
def resource(stand_in: PigmentStandIn, tmp_path: Path) -> PigmentResource:
    return PigmentResource(**resource_settings(stand_in, tmp_path))


def test_one_day_end_to_end(stand_in: PigmentStandIn, resource: PigmentResource,
                            tmp_path: Path) -> None:
    for day in days_before(DAY + timedelta(days=1), 3):
        stand_in.add_events(synthetic_events(day, 150, seed=day.toordinal()))
    result = run(resource, day=DAY.isoformat())
    assert result.success
    storage = LocalStorage(tmp_path)
    truth = sorted(event["id"] for event in stand_in.visible_events(event_day=DAY))
    raw_ids = [orjson.loads(line)["id"] for line in storage.raw_path(DAY).read_bytes().splitlines()]
    assert sorted(raw_ids) == truth
    assert csv_ids(storage.csv_path(DAY)) == raw_ids
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    assert sorted(pushed) == truth  # every event once
    raw_meta = by_partition(result, "raw_audit_events")[DAY.isoformat()]
    assert raw_meta["dagster/row_count"] == 150
    assert raw_meta["path"] == str(storage.raw_path(DAY))
    assert raw_meta["bytes"] == storage.raw_path(DAY).stat().st_size
    assert sum(raw_meta["events_by_type"].values()) == 150
    assert raw_meta["first_event_at"].startswith(DAY.isoformat())
    csv_meta = by_partition(result, "audit_events_csv")[DAY.isoformat()]
    assert csv_meta["dagster/row_count"] == 150 and csv_meta["columns"] > 10
    assert "|" in csv_meta["preview"]
    import_meta = by_partition(result, "audit_events_import")[DAY.isoformat()]
    assert import_meta["rows_pushed"] == import_meta["inserted"] == 150
    assert import_meta["import_ids"] == [record.import_id for record in stand_in.imports]
    assert import_meta["chunks_pushed"] == len(stand_in.imports) > 1  # 0.05 MB chunks
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert {check.check_name for check in result.get_asset_check_evaluations()} == {
        "event_ids_unique_and_in_day", "no_rejected_events", "one_csv_row_per_event",
        "import_reports_cover_rows"}
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert {entry["status"] for entry in record["imports"]} == {"Completed"}


def test_a_range_runs_as_one_run_with_one_scan(stand_in: PigmentStandIn,
                                               resource: PigmentResource,
                                               tmp_path: Path) -> None:
    days = days_before(DAY, 3)
    for day in days:
        stand_in.add_events(synthetic_events(day, 120, seed=day.toordinal()))
    result = run(resource, first=days[0].isoformat(), last=days[-1].isoformat())
    assert result.success
    raw = by_partition(result, "raw_audit_events")
    assert sorted(raw) == [day.isoformat() for day in days]
    assert {meta["dagster/row_count"] for meta in raw.values()} == {120}
    # One scan from the first day: 360 events (plus few stragglers) in pages of 100.
    assert stand_in.request_counts["audit"] == 4
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(
        event["id"] for day in days for event in stand_in.visible_events(event_day=day))


def test_an_empty_day_is_a_normal_outcome(stand_in: PigmentStandIn, resource: PigmentResource,
                                          tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY - timedelta(days=1), 20, seed=2))
    result = run(resource, day=DAY.isoformat())
    assert result.success
    storage = LocalStorage(tmp_path)
    assert storage.raw_path(DAY).read_bytes() == storage.csv_path(DAY).read_bytes() == b""
    assert stand_in.request_counts["push"] == 0
    assert by_partition(result, "raw_audit_events")[DAY.isoformat()]["empty_day"] is True
    assert by_partition(result, "audit_events_csv")[DAY.isoformat()]["dagster/row_count"] == 0
    assert by_partition(result, "audit_events_import")[DAY.isoformat()]["nothing_to_push"]


def test_rerun_gives_the_same_files_and_pushes_nothing_twice(stand_in: PigmentStandIn,
                                                             resource: PigmentResource,
                                                             tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 200, seed=5))
    run(resource, day=DAY.isoformat())
    storage = LocalStorage(tmp_path)
    first = (storage.raw_path(DAY).read_bytes(), storage.csv_path(DAY).read_bytes())
    pushes = stand_in.request_counts["push"]
    result = run(resource, day=DAY.isoformat())
    assert (storage.raw_path(DAY).read_bytes(), storage.csv_path(DAY).read_bytes()) == first
    assert stand_in.request_counts["push"] == pushes
    meta = by_partition(result, "audit_events_import")[DAY.isoformat()]
    assert (meta["rows_pushed"], meta["events_already_in_pigment"]) == (0, 200)
    # A forced re-push (config or run tag) sends every event again.
    forced = run(resource, day=DAY.isoformat(), run_config={
        "ops": {"audit_events_import": {"config": {"force_full_repush": True}}}})
    assert by_partition(forced, "audit_events_import")[DAY.isoformat()]["rows_pushed"] == 200
    tagged = run(resource, day=DAY.isoformat(), tags={FORCE_REPUSH_TAG: "true"})
    assert by_partition(tagged, "audit_events_import")[DAY.isoformat()]["rows_pushed"] == 200
    assert len(stand_in.pushed_rows()) == 600


def test_a_failed_import_fails_and_its_events_are_pushed_again(stand_in: PigmentStandIn,
                                                               tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 50, seed=6))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
    stand_in.fail_next_imports(1)
    failed = run(resource, day=DAY.isoformat(), raise_on_error=False)
    assert not failed.success
    record = orjson.loads(LocalStorage(tmp_path).import_record_path(DAY).read_bytes())
    assert [entry["status"] for entry in record["imports"]] == ["Failed"]
    retried = run(resource, day=DAY.isoformat())
    assert by_partition(retried, "audit_events_import")[DAY.isoformat()]["rows_pushed"] == 50


def test_missing_configuration_names_the_variable(stand_in: PigmentStandIn,
                                                  tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 10, seed=7))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path,
                                                   import_configuration_id=None))
    result = run(resource, day=DAY.isoformat(), raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    assert "PIGMENT_IMPORT_CONFIGURATION_ID" in str(failure.step_failure_data.error)
    assert stand_in.request_counts["push"] == 0


def test_resource_repr_hides_the_keys(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    assert AUDIT_KEY not in repr(resource) and IMPORT_KEY not in repr(resource)
    assert AUDIT_KEY not in str(resource)
