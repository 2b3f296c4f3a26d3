"""Late events: the next scheduled run completes the earlier days and pushes only what is new."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import TODAY, days_before, resource_settings
from pigment_audit_assets_tests.schedule_support import (
    UTC,
    definitions,
    one_request,
    partition_metadata,
    range_tags,
    raw_ids,
    run_job,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

DAY = TODAY - timedelta(days=6)  # "yesterday" at the first tick
FIRST_TICK = datetime.combine(DAY + timedelta(days=1), time(4), tzinfo=UTC)
EVENTS_PER_DAY = 150


def ingested_after(events: list[dict[str, Any]], moment: datetime) -> set[str]:
    return {event["id"] for event in events
            if datetime.fromisoformat(event["ingestionTimestamp"].replace("Z", "+00:00")) > moment}


@pytest.fixture
def late_world(stand_in: PigmentStandIn) -> dict[date, list[dict[str, Any]]]:
    """DAY-4 .. DAY+1, a third of each day's events ingested 1 to 20 hours late.

    At 04:00 the next morning some of a day's events are still to come; a day later all are in.
    """
    stand_in.set_now(FIRST_TICK)
    events = {day: synthetic_events(day, EVENTS_PER_DAY, seed=day.toordinal(),
                                    late_fraction=0.3, max_lateness=timedelta(hours=20))
              for day in days_before(DAY + timedelta(days=1), 6)}
    for day_events in events.values():
        stand_in.add_events(day_events)
    return events


def test_next_run_completes_the_earlier_day_and_pushes_only_new_events(
        stand_in: PigmentStandIn, late_world: dict[date, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=60), resource=resource)
    storage = LocalStorage(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        # The morning after DAY: DAY, in one run (no watermark yet: scanned from its start).
        first_request = one_request(defs, FIRST_TICK)
        assert dict(first_request.tags).items() >= range_tags(DAY, DAY).items()
        first = run_job(defs, dict(first_request.tags), instance)
        assert first.success
        missing = ingested_after(late_world[DAY], FIRST_TICK)
        assert missing, "the test needs events of DAY that are not visible yet"
        assert sorted(raw_ids(tmp_path, DAY)) == truth_ids(stand_in, DAY)
        assert not missing & set(raw_ids(tmp_path, DAY))
        first_raw = {day: storage.raw_path(day).read_bytes()
                     for day in days_before(DAY, 4) if storage.raw_path(day).exists()}
        pushed_first = len(stand_in.pushed_rows())
        before_count = len(raw_ids(tmp_path, DAY))

        # A day later, the late events of DAY have all been ingested.
        stand_in.advance(timedelta(days=1))
        second_tick = FIRST_TICK + timedelta(days=1)
        assert stand_in.now() == second_tick
        assert not ingested_after(late_world[DAY], second_tick)
        second_request = one_request(defs, second_tick)
        assert dict(second_request.tags).items() >= range_tags(DAY + timedelta(days=1),
                                                               DAY + timedelta(days=1)).items()
        second = run_job(defs, dict(second_request.tags), instance)
        assert second.success

        # DAY is now complete: its raw file is the stand-in's truth, its CSV follows.
        assert sorted(raw_ids(tmp_path, DAY)) == truth_ids(stand_in, DAY)
        assert missing <= set(raw_ids(tmp_path, DAY))
        assert len(raw_ids(tmp_path, DAY)) == EVENTS_PER_DAY
        raw_meta = partition_metadata(second, "raw_audit_events")
        day_meta = raw_meta[DAY.isoformat()]
        assert day_meta["changed"] is True
        assert day_meta["events_added"] == len(missing) == EVENTS_PER_DAY - before_count
        # Scanned from the watermark: most of DAY's stored events were not read again, and kept.
        assert 0 < day_meta["events_kept_from_before"] <= before_count
        scan_line = next(entry.user_message for entry in instance.all_logs(second.run_id)
                         if entry.user_message.startswith("This run's audit scan"))
        assert DAY.isoformat() in scan_line.split("days whose events changed:")[1]
        # DAY-2 gained nothing after the first scan: not written again, not materialized.
        quiet = DAY - timedelta(days=2)
        assert not ingested_after(late_world[quiet], FIRST_TICK)
        assert quiet.isoformat() not in raw_meta
        assert not storage.raw_path(quiet).exists() or \
            storage.raw_path(quiet).read_bytes() == first_raw.get(quiet)
        csv_meta = partition_metadata(second, "audit_events_csv")
        assert csv_meta[DAY.isoformat()]["dagster/row_count"] == EVENTS_PER_DAY
        # The change is in the run's logs.
        messages = [entry.user_message for entry in instance.all_logs(second.run_id)]
        assert any(f"{DAY}: the raw file changed since it was last written: {len(missing)} new"
                   in message for message in messages)

        # The import of DAY pushed only the late events; nothing was ever pushed twice.
        import_meta = partition_metadata(second, "audit_events_import")[DAY.isoformat()]
        assert import_meta["rows_pushed"] == len(missing)
        assert import_meta["events_already_in_pigment"] == before_count
        assert quiet.isoformat() not in partition_metadata(second, "audit_events_import")
        second_rows = stand_in.pushed_rows()[pushed_first:]
        assert {row["id"] for row in second_rows if row["id"] in set(raw_ids(tmp_path, DAY))} \
            == missing
        pushed = Counter(row["id"] for row in stand_in.pushed_rows())
        assert max(pushed.values()) == 1
        # Every pushed event is in its day's raw file; DAY and DAY+1 are in Pigment in full.
        stored = {event_id for path in (tmp_path / "raw").iterdir()
                  for event_id in raw_ids(tmp_path, date.fromisoformat(path.stem))}
        assert set(pushed) <= stored
        assert set(truth_ids(stand_in, DAY)) | set(truth_ids(stand_in, DAY + timedelta(days=1))) \
            <= set(pushed)


def test_the_first_file_of_an_older_day_from_late_events_says_what_it_may_lack(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The first daily tick meets a late event of an older day that no run has materialized.
    Its file is written (the watermark moves past the event; a day whose daily run failed has
    it nowhere else), and its materialization says it holds only what daily scans saw. Before,
    nothing told it from a complete day (checks green, row count 1 of 40). The day's own run
    then reads the rest, and the late event is pushed once."""
    old = DAY - timedelta(days=20)
    stand_in.set_now(FIRST_TICK)
    stand_in.add_events(synthetic_events(DAY, 50, seed=1))
    old_events = synthetic_events(old, 40, seed=2)
    ingested = datetime.combine(DAY, time(10), tzinfo=UTC)
    old_events[0]["ingestionTimestamp"] = ingested.isoformat().replace("+00:00", "Z")
    stand_in.add_events(old_events)
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=60), resource=resource)
    with dg.DagsterInstance.ephemeral() as instance:
        daily = run_job(defs, dict(one_request(defs, FIRST_TICK).tags), instance)
        raw = partition_metadata(daily, "raw_audit_events")
        assert raw[old.isoformat()]["first_file_from_late_events"] is True
        assert raw[DAY.isoformat()]["first_file_from_late_events"] is False
        described = [m.description or "" for m in
                     daily.asset_materializations_for_node("raw_audit_events")
                     if m.partition == old.isoformat()]
        assert described and "materialize the day to read the rest" in described[0]
        assert raw_ids(tmp_path, old) == [old_events[0]["id"]]
        # The day's own run (a backfill): every event, the late one pushed once.
        backfill = run_job(defs, range_tags(old, old), instance)
        assert partition_metadata(backfill, "audit_events_import")[old.isoformat()][
            "dagster/row_count"] == 40
        assert sorted(raw_ids(tmp_path, old)) == truth_ids(stand_in, old)
    pushed = [row["id"] for row in stand_in.pushed_rows() if row["id"] in set(truth_ids(
        stand_in, old))]
    assert sorted(pushed) == truth_ids(stand_in, old)
