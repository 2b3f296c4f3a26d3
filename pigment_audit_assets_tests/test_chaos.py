"""Days materialized for real under a seeded mix of every fault, a small budget, bad events.

The output is held against the stand-in's truth: every good event in its day's raw file once,
every malformed one in the rejects file, every CSV row imported exactly once. A push whose
answer is cut off after Pigment's 200 is recorded as accepted (its import id lost), never
pushed again: that is what keeps pushes exactly-once under "truncate" too.
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.imports import ANSWER_LOST
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    ASSETS,
    DAY,
    days_before,
    resource_settings,
)
from pigment_audit_assets_tests.stand_in import FAULT_KINDS, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

DAYS = days_before(DAY, 3)


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=timezone.utc)


def malformed_events(day: date) -> list[tuple[Any, datetime]]:
    """Four kinds of bad event ingested during ``day``; two carry their ingestion time."""
    stamp = at(day, 9).isoformat().replace("+00:00", "Z")
    return [
        ([f"not an object {day}"], at(day, 8)),
        ({"eventType": "UserInvited", "eventTimestamp": stamp, "ingestionTimestamp": stamp,
          "note": f"no id {day}"}, at(day, 9)),
        ({"id": f"no-timestamp-{day}", "eventType": "UserInvited",
          "ingestionTimestamp": stamp}, at(day, 10)),
        ({"id": f"bad-timestamp-{day}", "eventTimestamp": "yesterday-ish"}, at(day, 11)),
    ]


def csv_ids(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def materialize_range(resource: PigmentResource, days: list[date]) -> dg.ExecuteInJobResult:
    return dg.materialize(
        ASSETS, resources={"pigment": resource}, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: days[0].isoformat(),
              ASSET_PARTITION_RANGE_END_TAG: days[-1].isoformat()})


@pytest.mark.parametrize(("seed", "budget_retry_after"), [(7, True), (23, False)])
def test_days_under_chaos_lose_nothing_and_double_nothing(
        stand_in: PigmentStandIn, tmp_path: Path, seed: int, budget_retry_after: bool) -> None:
    for day in [*DAYS, DAY + timedelta(days=1)]:
        stand_in.add_events(synthetic_events(day, 260, seed=seed + day.toordinal(),
                                             late_fraction=0.05))
    for day in DAYS:
        stand_in.add_events(malformed_events(day))
    stand_in.add_events(synthetic_events(DAYS[1], 40, seed=seed + DAYS[1].toordinal()))  # dups
    stand_in.chaos(rate=0.3, seed=seed, kinds=FAULT_KINDS, slow_delay=0.05)
    # A small per-window budget: the pacer below allows more, so Pigment's 429 is met too.
    stand_in.set_budget(12, window_seconds=1.0, retry_after=budget_retry_after)
    resource = PigmentResource(**resource_settings(
        stand_in, tmp_path, retry_min_backoff_seconds=0.05, retry_max_backoff_seconds=0.5,
        retry_patience_seconds=30.0, requests_per_window=20, window_seconds=1.0))

    result = materialize_range(resource, DAYS)
    assert result.success
    storage = LocalStorage(tmp_path)
    faults = Counter((record.endpoint, record.status) for record in stand_in.requests_log)
    assert sum(count for (_, status), count in faults.items() if status == 429) > 0
    assert sum(count for (_, status), count in faults.items() if status is None) > 0  # resets

    pushed = Counter(row["id"] for row in stand_in.pushed_rows())
    all_csv_ids: list[str] = []
    raw_meta = {m.partition: m.metadata for m in
                result.asset_materializations_for_node("raw_audit_events")}
    for day in DAYS:
        truth = sorted(event["id"] for event in stand_in.visible_events(event_day=day))
        raw_ids = [orjson.loads(line)["id"]
                   for line in storage.raw_path(day).read_bytes().splitlines()]
        assert sorted(raw_ids) == truth and len(raw_ids) == len(set(raw_ids))  # raw == truth
        ids = csv_ids(storage.csv_path(day))
        assert ids == raw_ids  # one CSV row per raw event, same order
        all_csv_ids += ids
        rejects_path = storage.rejected_path(day)
        assert "rejected" in rejects_path.name and day.isoformat() in rejects_path.name
        rejects = [orjson.loads(line) for line in rejects_path.read_bytes().splitlines()]
        assert raw_meta[day.isoformat()]["rejected_events"].value == len(rejects)
        record = orjson.loads(storage.import_record_path(day).read_bytes())
        statuses = Counter(entry["status"] for entry in record["imports"])
        assert set(statuses) <= {"Completed", ANSWER_LOST}
        recorded = [event_id for entry in record["imports"] for event_id in entry["eventIds"]]
        assert sorted(recorded) == sorted(ids)  # the record accounts for every row once
    # Malformed events: those with an ingestionTimestamp under their day, the rest under the
    # run's first day; all twelve on record, none in any raw file or CSV.
    all_rejects = [orjson.loads(line) for day in DAYS
                   for line in storage.rejected_path(day).read_bytes().splitlines()]
    assert len(all_rejects) == 12
    assert Counter(item["reason"] for item in all_rejects) == {
        "not a JSON object (list)": 3, "no id": 3, "no parseable eventTimestamp": 6}
    assert len(storage.rejected_path(DAYS[0]).read_bytes().splitlines()) == 6 + 2
    assert len(storage.rejected_path(DAYS[2]).read_bytes().splitlines()) == 2
    # Every CSV row imported exactly once, and nothing else.
    assert pushed == Counter(all_csv_ids)
    assert max(pushed.values()) == 1

    checks = {(check.check_name, check.passed) for check in
              result.get_asset_check_evaluations()}
    assert ("no_rejected_events", False) in checks  # warns, and did not block anything
    assert ("event_ids_unique_and_in_day", True) in checks
    assert ("one_csv_row_per_event", True) in checks

    # A second run under the same chaos changes nothing and pushes nothing.
    before = (len(stand_in.imports), [storage.raw_path(day).read_bytes() for day in DAYS])
    assert materialize_range(resource, DAYS).success
    assert (len(stand_in.imports), [storage.raw_path(day).read_bytes() for day in DAYS]) == before


def test_a_push_whose_answer_is_lost_is_recorded_not_repeated(stand_in: PigmentStandIn,
                                                              tmp_path: Path) -> None:
    """Truncate on push: Pigment said 200, the id was cut; the chunk is not pushed again."""
    from pigment_audit_assets_tests.stand_in import Fault

    stand_in.add_events(synthetic_events(DAY, 200, seed=3))
    stand_in.inject(Fault("truncate", "push"))
    resource = PigmentResource(**resource_settings(
        stand_in, tmp_path, retry_min_backoff_seconds=0.01, retry_max_backoff_seconds=0.1,
        requests_per_window=10_000, window_seconds=1.0))
    result = dg.materialize(ASSETS, resources={"pigment": resource},
                            partition_key=DAY.isoformat())
    assert result.success
    storage = LocalStorage(tmp_path)
    pushed = Counter(row["id"] for row in stand_in.pushed_rows())
    assert pushed == Counter(csv_ids(storage.csv_path(DAY))) and max(pushed.values()) == 1
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    lost = [entry for entry in record["imports"] if entry["status"] == ANSWER_LOST]
    assert len(lost) == 1 and lost[0]["importId"] is None and lost[0]["chunk"] == 1
    assert len(record["imports"]) == len(stand_in.imports)  # one record entry per import
    check = next(check for check in result.get_asset_check_evaluations()
                 if check.check_name == "import_reports_cover_rows")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "chunk 1" in (check.description or "")
    # The next run pushes nothing: the lost-answer chunk counts as in Pigment.
    again = dg.materialize(ASSETS, resources={"pigment": resource},
                           partition_key=DAY.isoformat())
    assert again.success and len(stand_in.imports) == len(record["imports"])
