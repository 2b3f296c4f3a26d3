"""The daily schedule: the days it asks for, its settings, and that its request runs as one run."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import orjson
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.days import AUDIT_LOOKBACK, day_start, parse_zone
from pigment_audit_assets.core.errors import ConfigError
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.definitions import build_definitions
from pigment_audit_assets.defs.assets import FULL_RESCAN_TAG, INCREMENTAL, SCAN_TAG
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets.defs.schedules import (
    HOUR_VARIABLE,
    LOOKBACK_MARGIN,
    LOOKBACK_VARIABLE,
    schedule_settings,
    scheduled_days,
)
from pigment_audit_assets_tests.conftest import TODAY, days_before, resource_settings
from pigment_audit_assets_tests.schedule_support import (
    JOB,
    NODES,
    SCHEDULE,
    UTC,
    definitions,
    evaluate,
    one_request,
    raw_ids,
    requested_range,
    run_job,
    scan_floor,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events


def test_utc_tick_asks_for_yesterday_by_default() -> None:
    request = one_request(definitions(date(2025, 1, 1)), datetime(2025, 9, 15, 4, tzinfo=UTC))
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG],
            request.tags[ASSET_PARTITION_RANGE_END_TAG]) == ("2025-09-14", "2025-09-14")
    assert request.tags[SCAN_TAG] == INCREMENTAL and FULL_RESCAN_TAG not in request.tags


def test_utc_tick_asks_for_yesterday_and_the_lookback_days() -> None:
    defs = definitions(date(2025, 1, 1), lookback_days=4)
    at = datetime(2025, 9, 15, 4, tzinfo=UTC)
    requests = evaluate(defs, at)
    assert isinstance(requests, list) and len(requests) == 1
    request = requests[0]
    assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == "2025-09-11"
    assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == "2025-09-14"
    assert request.run_key == "2025-09-14"
    assert request.tags[FULL_RESCAN_TAG] == "2025-09-11"  # re-scanned in full from there
    assert request.tags["dagster/schedule_name"] == SCHEDULE
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == "0 4 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    # Every requested key is a partition of the job: the range is valid as it stands.
    keys = defs.resolve_job_def(JOB).partitions_def.get_partition_keys(  # type: ignore[union-attr]
        current_time=at)
    assert {"2025-09-11", "2025-09-14"} <= set(keys) and keys[-1] == "2025-09-14"


@pytest.mark.parametrize(
    ("zone", "local_tick", "expected"),
    [
        # 04:00 in Los Angeles is 11:00/12:00 UTC the same day: yesterday there is the 14th.
        ("America/Los_Angeles", datetime(2025, 9, 15, 4), ("2025-09-11", "2025-09-14")),
        # 04:00 in Auckland is still the 14th in UTC: yesterday there is nevertheless the 14th.
        ("Pacific/Auckland", datetime(2025, 9, 15, 4), ("2025-09-11", "2025-09-14")),
        # The morning after Paris's clocks went back (25-hour day): still one whole day back.
        ("Europe/Paris", datetime(2025, 10, 27, 4), ("2025-10-23", "2025-10-26")),
    ],
)
def test_non_utc_tick_uses_the_partitions_zone(zone: str, local_tick: datetime,
                                               expected: tuple[str, str]) -> None:
    defs = definitions(date(2025, 1, 1), zone, lookback_days=4)
    tick = local_tick.replace(tzinfo=ZoneInfo(zone))
    assert defs.resolve_schedule_def(SCHEDULE).execution_timezone == zone
    assert requested_range(defs, tick) == expected
    # The same instant given in UTC (as the daemon may) asks for the same days.
    assert requested_range(defs, tick.astimezone(UTC)) == expected
    # The last day asked for is complete in the zone at the tick, and the next one is not.
    last = date.fromisoformat(expected[1])
    assert day_start(last + timedelta(days=1), parse_zone(zone)) <= tick
    assert day_start(last + timedelta(days=2), parse_zone(zone)) > tick


def test_hour_and_lookback_are_configurable() -> None:
    defs = definitions(date(2025, 1, 1), "Europe/Paris", hour=6, lookback_days=0)
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == "0 6 * * *"
    tick = datetime(2025, 9, 15, 6, tzinfo=ZoneInfo("Europe/Paris"))
    assert requested_range(defs, tick) == ("2025-09-14", "2025-09-14")


def test_range_is_clipped_to_the_first_partition_and_skips_before_it() -> None:
    defs = definitions(date(2025, 9, 13), lookback_days=4)
    assert requested_range(defs, datetime(2025, 9, 15, 4, tzinfo=UTC)) == (
        "2025-09-13", "2025-09-14")
    assert requested_range(defs, datetime(2025, 9, 14, 4, tzinfo=UTC)) == (
        "2025-09-13", "2025-09-13")
    skipped = evaluate(defs, datetime(2025, 9, 13, 4, tzinfo=UTC))
    assert isinstance(skipped, str) and "No complete day" in skipped


def test_range_is_clipped_to_pigments_180_days() -> None:
    tick = datetime(2025, 9, 15, 4, tzinfo=UTC)
    first, last = scheduled_days(tick, date(2024, 1, 1), "UTC", lookback_days=400) or (None, None)
    assert last == date(2025, 9, 14)
    assert first is not None
    # The first day kept starts within 180 days of the tick, with the margin for queueing...
    assert day_start(first, ZoneInfo("UTC")) >= tick - AUDIT_LOOKBACK + LOOKBACK_MARGIN
    # ...and the day before it would not have.
    assert day_start(first - timedelta(days=1), ZoneInfo("UTC")) < (
        tick - AUDIT_LOOKBACK + LOOKBACK_MARGIN)
    assert (tick.date() - first).days in (178, 179)
    # Through the schedule itself (a lookback that long is only reachable in code).
    defs = definitions(date(2024, 1, 1), lookback_days=400)
    assert requested_range(defs, tick) == (first.isoformat(), "2025-09-14")


@pytest.mark.parametrize(
    ("hour", "lookback", "variable"),
    [("24", None, HOUR_VARIABLE), ("-1", None, HOUR_VARIABLE), ("4am", None, HOUR_VARIABLE),
     ("4.5", None, HOUR_VARIABLE), (None, "31", LOOKBACK_VARIABLE),
     (None, "-2", LOOKBACK_VARIABLE), (None, "three", LOOKBACK_VARIABLE)],
)
def test_invalid_settings_name_their_variable(hour: str | None, lookback: str | None,
                                              variable: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=variable):
        schedule_settings(hour, lookback)
    # Loading the definitions (what dagster dev does) fails the same way.
    for name, value in ((HOUR_VARIABLE, hour), (LOOKBACK_VARIABLE, lookback)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=variable) as error:
        build_definitions()
    assert repr(hour if hour is not None else lookback) in str(error.value)


def test_shipped_definitions_carry_the_schedule_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert schedule_settings(None, None) == (4, 0)
    assert schedule_settings("", "") == (4, 0)
    assert schedule_settings("0", "30") == (0, 30)
    monkeypatch.setenv(HOUR_VARIABLE, "7")
    monkeypatch.setenv(LOOKBACK_VARIABLE, "2")
    monkeypatch.setenv("PIGMENT_AUDIT_TIMEZONE", "America/New_York")
    monkeypatch.setenv("PIGMENT_AUDIT_START_DATE", (TODAY - timedelta(days=30)).isoformat())
    defs = build_definitions()
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 7 * * *",
                                                                     "America/New_York")
    tick = datetime.combine(TODAY - timedelta(days=2), time(7), tzinfo=ZoneInfo("America/New_York"))
    expected = (TODAY - timedelta(days=4), TODAY - timedelta(days=3))
    assert requested_range(defs, tick) == tuple(day.isoformat() for day in expected)


def test_the_scheduled_request_runs_as_one_ranged_run(stand_in: PigmentStandIn,
                                                      tmp_path: Path) -> None:
    """Evaluate the schedule at the stand-in's clock, then execute the job with its request."""
    tick = datetime.combine(TODAY - timedelta(days=3), time(4), tzinfo=UTC)
    stand_in.set_now(tick)
    for day in days_before(TODAY - timedelta(days=3), 6):  # the run's 4 days, one each side
        stand_in.add_events(synthetic_events(day, 80, seed=day.toordinal()))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=60), resource=resource, lookback_days=4)
    request = one_request(defs, tick)
    days = days_before(TODAY - timedelta(days=4), 4)
    assert (request.tags[ASSET_PARTITION_RANGE_START_TAG],
            request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (days[0].isoformat(),
                                                             days[-1].isoformat())
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_job(defs, dict(request.tags), instance)
        assert result.success
        assert len(instance.get_runs()) == 1
    # The run's days, and the day before them if the scan found late events of it.
    before = days[0] - timedelta(days=1)
    late_before = [event for event in stand_in.visible_events(event_day=before)
                   if event["ingestionTimestamp"] >= f"{days[0].isoformat()}T00:00:00"]
    expected_keys = [day.isoformat() for day in ([before] if late_before else []) + days]
    for node in NODES:
        keys = sorted(m.partition or "" for m in result.asset_materializations_for_node(node))
        assert keys == expected_keys, node
    # One scan from the first day: exactly the pages of the events ingested since then.
    assert stand_in.request_counts["audit"] == scan_floor(stand_in, days[0])
    truth: list[str] = []
    for day in days:
        assert sorted(raw_ids(tmp_path, day)) == truth_ids(stand_in, day) != [], day
        truth += truth_ids(stand_in, day)
    truth += [event["id"] for event in late_before]  # late events of the day before, placed
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(truth)
    # The tick's own day is not complete: what the scan saw of it waits in its raw file for
    # the next tick, with no materialization. The day before holds just its late events.
    storage = LocalStorage(tmp_path)
    today = [orjson.loads(line)["id"] for line in
             storage.raw_path(days[-1] + timedelta(days=1)).read_bytes().splitlines()]
    assert today and set(today) <= set(truth_ids(stand_in, days[-1] + timedelta(days=1)))
    if late_before:
        assert sorted(raw_ids(tmp_path, before)) == sorted(e["id"] for e in late_before)
