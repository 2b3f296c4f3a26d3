"""Late events of any age, by ingestion watermark: the schedule's ticks run on their own.

Each tick: the stand-in's clock moved to the tick, the schedule evaluated, its run executed in
process (no daemon, no sensor). Then every day is held against the stand-in's truth in raw,
CSV and Pigment, and each tick's audit requests against the floor: the pages holding the events
ingested since the previous watermark, less the overlap.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time as clock
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from pigment_audit_assets.core.days import parse_timestamp
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.watermark import WATERMARK_KEY, read_watermark
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    IMPORT_KEY,
    TODAY,
    resource_settings,
)
from pigment_audit_assets_tests.schedule_support import (
    definitions,
    one_request,
    partition_metadata,
    range_tags,
    run_job,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

UTC = timezone.utc
OVERLAP = timedelta(minutes=60)
FIRST_DAY = TODAY - timedelta(days=16)  # the first partition


def tick_at(day: date) -> datetime:
    """The schedule's tick on ``day`` (04:00 UTC)."""
    return datetime.combine(day, time(4), tzinfo=UTC)


def ingested(event: dict[str, Any]) -> datetime:
    return parse_timestamp(event["ingestionTimestamp"])


def floor_pages(stand_in: PigmentStandIn, since: datetime) -> int:
    """Pages holding the events visible now that were ingested at or after ``since``."""
    count = sum(1 for event in stand_in.visible_events() if ingested(event) >= since)
    return math.ceil(count / stand_in.page_size)


def csv_ids(root: Path, day: date) -> list[str]:
    path = root / "csv" / f"{day.isoformat()}.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def raw_ids(root: Path, day: date) -> list[str]:
    path = root / "raw" / f"{day.isoformat()}.jsonl"
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


@pytest.fixture
def late_world(stand_in: PigmentStandIn) -> dict[date, list[dict[str, Any]]]:
    """Days from two before the first partition to the last tick's day; 10 % of each day's
    events ingested late, up to 10 days (from an hour: the stand-in's synthetic lateness)."""
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(-2, 15)]
    events = {day: synthetic_events(day, 120, seed=day.toordinal(), late_fraction=0.1,
                                    max_lateness=timedelta(days=10)) for day in days}
    for day_events in events.values():
        stand_in.add_events(day_events)
    return events


def test_two_weeks_of_ticks_leave_every_day_exact_at_one_day_of_pages(
        stand_in: PigmentStandIn, late_world: dict[date, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    storage = LocalStorage(tmp_path)
    set_aside: Counter[str] = Counter()
    late_days_materialized = 0
    with dg.DagsterInstance.ephemeral() as instance:
        for offset in range(1, 15):
            tick = tick_at(FIRST_DAY + timedelta(days=offset))
            stand_in.set_now(tick)
            state = read_watermark(storage)
            yesterday = tick.date() - timedelta(days=1)
            since = (state.ingested_up_to - OVERLAP if state.ingested_up_to
                     else datetime.combine(yesterday, time(0), tzinfo=UTC))
            floor = floor_pages(stand_in, since)
            request = one_request(defs, tick)
            assert dict(request.tags).items() >= range_tags(yesterday, yesterday).items()
            before = stand_in.request_counts["audit"]
            result = run_job(defs, dict(request.tags), instance)
            assert result.success
            requests = stand_in.request_counts["audit"] - before
            assert requests <= 1.1 * floor + 1, (tick, requests, floor)
            raw_meta = partition_metadata(result, "raw_audit_events")
            for key, meta in raw_meta.items():
                set_aside.update(meta["events_set_aside"])
                if key != yesterday.isoformat():
                    assert meta["events_added"] > 0  # an older day only when it gained events
                    late_days_materialized += 1
            # Each day a tick materialized has its three assets materialized by that tick.
            assert set(partition_metadata(result, "audit_events_csv")) == set(raw_meta)
            assert set(partition_metadata(result, "audit_events_import")) == set(raw_meta)
            # Only the rejects check may warn: set-aside events are filed as rejects.
            assert all(check.passed for check in result.get_asset_check_evaluations()
                       if check.check_name != "no_rejected_events")
            # The watermark never moves back and never passes what the stand-in has shown.
            after = read_watermark(storage).ingested_up_to
            assert after is not None and after <= tick
            assert state.ingested_up_to is None or after >= state.ingested_up_to
    assert late_days_materialized > 5  # late events did land in older days
    last_tick = tick_at(FIRST_DAY + timedelta(days=14))
    pushed = Counter(row["id"] for row in stand_in.pushed_rows())
    assert max(pushed.values()) == 1  # each event pushed once
    for offset in range(14):  # every partition up to the last tick's yesterday
        day = FIRST_DAY + timedelta(days=offset)
        truth = truth_ids(stand_in, day)
        assert sorted(raw_ids(tmp_path, day)) == truth, day
        assert csv_ids(tmp_path, day) == raw_ids(tmp_path, day), day
        assert sorted(event_id for event_id in pushed if event_id in set(truth)) == truth, day
    # Late events of the days before the first partition: counted and filed, never pushed.
    early = {event["id"]: day for day in (FIRST_DAY - timedelta(days=2),
                                          FIRST_DAY - timedelta(days=1))
             for event in late_world[day]
             if datetime.combine(FIRST_DAY, time(0), tzinfo=UTC) <= ingested(event) <= last_tick}
    assert early, "the test needs late events of days before the first partition"
    # Each scan counts what it set aside; the overlap may show one event to two scans.
    assert len(early) <= sum(set_aside.values()) <= 2 * len(early)
    assert set(set_aside) == {day.isoformat() for day in early.values()}
    assert not set(early) & set(pushed)
    filed = [orjson.loads(line) for path in (tmp_path / "rejected").iterdir()
             for line in path.read_bytes().splitlines()]
    assert {record["event"]["id"] for record in filed
            if "before the first partition" in record["reason"]} == set(early)
    assert not storage.raw_path(FIRST_DAY - timedelta(days=1)).exists()


def _two_ticks(stand_in: PigmentStandIn, tmp_path: Path, defs: dg.Definitions,
               instance: dg.DagsterInstance) -> None:
    for offset in (1, 2):
        tick = tick_at(FIRST_DAY + timedelta(days=offset))
        stand_in.set_now(tick)
        assert run_job(defs, dict(one_request(defs, tick).tags), instance).success


def _assert_exact(stand_in: PigmentStandIn, root: Path, days: list[date]) -> None:
    pushed = Counter(row["id"] for row in stand_in.pushed_rows())
    assert not pushed or max(pushed.values()) == 1
    for day in days:
        truth = truth_ids(stand_in, day)
        assert sorted(raw_ids(root, day)) == truth, day
        assert csv_ids(root, day) == raw_ids(root, day), day
        assert set(truth) <= set(pushed), day


def test_a_backfill_between_two_ticks_leaves_the_watermark_alone(
        stand_in: PigmentStandIn, late_world: dict[date, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    with dg.DagsterInstance.ephemeral() as instance:
        _two_ticks(stand_in, tmp_path, defs, instance)
        watermark = (tmp_path / WATERMARK_KEY).read_bytes()
        # Half a day later, a backfill of the first two days, from the UI say.
        stand_in.set_now(tick_at(FIRST_DAY + timedelta(days=2)) + timedelta(hours=12))
        backfill = run_job(defs, range_tags(FIRST_DAY, FIRST_DAY + timedelta(days=1)), instance)
        assert backfill.success
        assert (tmp_path / WATERMARK_KEY).read_bytes() == watermark  # untouched
        tick = tick_at(FIRST_DAY + timedelta(days=3))
        stand_in.set_now(tick)
        assert run_job(defs, dict(one_request(defs, tick).tags), instance).success
    # The next tick still saw everything ingested since its watermark, the backfill's too.
    _assert_exact(stand_in, tmp_path, [FIRST_DAY + timedelta(days=n) for n in range(3)])


def test_a_scan_killed_with_sigkill_loses_nothing_and_the_watermark_stays_behind(
        stand_in: PigmentStandIn, late_world: dict[date, list[dict[str, Any]]],
        tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    storage = LocalStorage(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        _two_ticks(stand_in, tmp_path, defs, instance)
    watermark = read_watermark(storage).ingested_up_to
    stored = {path.name: path.read_bytes() for path in (tmp_path / "raw").iterdir()}
    tick = tick_at(FIRST_DAY + timedelta(days=3))
    stand_in.set_now(tick)
    # The third tick's run, in its own process, held at its second audit page, then killed.
    stand_in.page_size = 20
    stand_in.inject(Fault("slow", endpoint="audit", delay=0.0),
                    Fault("slow", endpoint="audit", delay=60.0))
    script = (
        "import sys, dagster as dg\n"
        "from pigment_audit_assets_tests.schedule_support import definitions, one_request, "
        "run_job\n"
        "from pigment_audit_assets.defs.resources import PigmentResource\n"
        "from datetime import date, datetime\n"
        "resource = PigmentResource(**__import__('json').loads(sys.argv[1]))\n"
        "defs = definitions(date.fromisoformat(sys.argv[2]), resource=resource)\n"
        "tick = datetime.fromisoformat(sys.argv[3])\n"
        "with dg.DagsterInstance.ephemeral() as instance:\n"
        "    run_job(defs, dict(one_request(defs, tick).tags), instance)\n")
    settings = {**resource_settings(stand_in, tmp_path), "audit_api_key": AUDIT_KEY,
                "import_api_key": IMPORT_KEY, "import_configuration_id": CONFIGURATION_ID}
    before = stand_in.request_counts["audit"]
    worker = subprocess.Popen([sys.executable, "-c", script, orjson.dumps(settings).decode(),
                               FIRST_DAY.isoformat(), tick.isoformat()],
                              env={**os.environ}, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = clock.monotonic() + 120
    while stand_in.request_counts["audit"] < before + 2 and clock.monotonic() < deadline:
        clock.sleep(0.05)  # polling for the held page to arrive, with a deadline
    assert stand_in.request_counts["audit"] >= before + 2, "the run never reached its scan"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    # Killed mid-scan: the day files and the watermark are as the previous tick left them.
    assert read_watermark(storage).ingested_up_to == watermark
    assert {path.name: path.read_bytes() for path in (tmp_path / "raw").iterdir()} == stored
    stand_in.page_size = 100
    with dg.DagsterInstance.ephemeral() as instance:  # the next tick, on its own
        next_tick = tick_at(FIRST_DAY + timedelta(days=4))
        stand_in.set_now(next_tick)
        assert run_job(defs, dict(one_request(defs, next_tick).tags), instance).success
    _assert_exact(stand_in, tmp_path, [FIRST_DAY + timedelta(days=n) for n in range(4)])


def test_a_late_event_of_a_day_before_the_first_partition_changes_nothing_else(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    stand_in.add_events(synthetic_events(FIRST_DAY, 50, seed=3))
    with dg.DagsterInstance.ephemeral() as instance:
        tick = tick_at(FIRST_DAY + timedelta(days=1))
        stand_in.set_now(tick)
        assert run_job(defs, dict(one_request(defs, tick).tags), instance).success
        files = {str(path.relative_to(tmp_path)): path.read_bytes()
                 for path in tmp_path.rglob("*") if path.is_file()
                 and path.name != WATERMARK_KEY}
        pushed = len(stand_in.pushed_rows())
        old = synthetic_events(FIRST_DAY - timedelta(days=20), 1, seed=4)[0]
        old["ingestionTimestamp"] = (tick + timedelta(hours=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
        stand_in.add_events([old, old])  # served twice: set aside, and counted, once
        next_tick = tick_at(FIRST_DAY + timedelta(days=2))
        stand_in.set_now(next_tick)
        result = run_job(defs, dict(one_request(defs, next_tick).tags), instance)
        assert result.success
    yesterday = (FIRST_DAY + timedelta(days=1)).isoformat()
    meta = partition_metadata(result, "raw_audit_events")
    assert set(meta) == {yesterday}  # nothing else materialized
    assert meta[yesterday]["events_set_aside"] == {
        (FIRST_DAY - timedelta(days=20)).isoformat(): 1}
    record = orjson.loads((tmp_path / "rejected" / f"{yesterday}.rejected.jsonl").read_bytes())
    assert record["event"]["id"] == old["id"] and "before the first partition" in record["reason"]
    assert len(stand_in.pushed_rows()) - pushed == 0  # yesterday had no events; old not pushed
    for name, data in files.items():  # what the first tick wrote is unchanged
        assert (tmp_path / name).read_bytes() == data, name


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1}', b'"a string"'])
def test_an_unreadable_watermark_rescans_what_is_reachable_and_loses_nothing(
        stand_in: PigmentStandIn, tmp_path: Path, content: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    for offset in range(3):
        stand_in.add_events(synthetic_events(FIRST_DAY + timedelta(days=offset), 60,
                                             seed=offset, late_fraction=0.3,
                                             max_lateness=timedelta(days=2)))
    with dg.DagsterInstance.ephemeral() as instance:
        _two_ticks(stand_in, tmp_path, defs, instance)
        (tmp_path / WATERMARK_KEY).write_bytes(content)
        tick = tick_at(FIRST_DAY + timedelta(days=3))
        stand_in.set_now(tick)
        result = run_job(defs, dict(one_request(defs, tick).tags), instance)
        assert result.success
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("could not be read" in message and "nothing is missed" in message
               for message in messages)
    assert read_watermark(storage := LocalStorage(tmp_path)).problem is None  # rewritten
    assert storage.read_bytes(WATERMARK_KEY) != content
    _assert_exact(stand_in, tmp_path, [FIRST_DAY + timedelta(days=n) for n in range(3)])


def test_a_watermark_from_a_newer_version_stops_the_run_before_anything(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    (tmp_path / WATERMARK_KEY).write_bytes(b'{"version": 99, "ingestedUpTo": "x"}')
    tick = tick_at(FIRST_DAY + timedelta(days=1))
    stand_in.set_now(tick)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_job(defs, dict(one_request(defs, tick).tags), instance,
                         raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    error, message = failure.step_failure_data.error, ""  # type: ignore[union-attr]
    while error is not None:
        message, error = message + error.message, error.cause
    assert "newer version" in message and WATERMARK_KEY in message
    assert sum(stand_in.request_counts.values()) == 0
    assert not (tmp_path / "raw").exists()


def test_a_watermark_beyond_the_180_days_starts_at_the_oldest_reachable_moment(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=resource)
    stand_in.add_events(synthetic_events(FIRST_DAY, 40, seed=8))
    tick = tick_at(FIRST_DAY + timedelta(days=1))
    stand_in.set_now(tick)
    (tmp_path / WATERMARK_KEY).write_bytes(b'{"version": 1, "ingestedUpTo": "'
                                           + (tick - timedelta(days=200)).strftime(
                                               "%Y-%m-%dT%H:%M:%SZ").encode() + b'"}')
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_job(defs, dict(one_request(defs, tick).tags), instance)
        assert result.success
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("beyond Pigment's 180-day lookback" in message and "can no longer be read"
               in message for message in messages)
    _assert_exact(stand_in, tmp_path, [FIRST_DAY])
