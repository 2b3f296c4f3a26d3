"""Days left pending by a failed daily run: the next daily run pushes them.

The daily scan files late events into older days and moves the watermark past them; when the
run's import then fails, no later scan sees those events again. The days stay marked in
``pending/`` until an import of them completes, and every daily run redoes the marked days.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest

from pigment_audit_assets.core import collect
from pigment_audit_assets.core.lease import hold_lease
from pigment_audit_assets.core.pending import (
    clear_if_pushed,
    mark_pending,
    note_csv_written,
    pending_days,
    pending_key,
    read_mark,
)
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import write_day_csv
from pigment_audit_assets.defs import resources as resources_module
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import ASSETS, DAY, TODAY, resource_settings
from pigment_audit_assets_tests.schedule_support import (
    JOB,
    definitions,
    one_request,
    partition_metadata,
    run_job,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

UTC = timezone.utc
FIRST_DAY = TODAY - timedelta(days=16)
LOG = logging.getLogger("test_pending")


def tick_at(day: date) -> datetime:
    """The schedule's tick on ``day`` (04:00 UTC)."""
    return datetime.combine(day, time(4), tzinfo=UTC)


def completed_ids(stand_in: PigmentStandIn) -> Counter[str]:
    """How many times each event id is in an import Pigment completed."""
    counts: Counter[str] = Counter()
    for record in stand_in.imports:
        if record.final_status == "Completed":
            reader = csv.DictReader(io.StringIO(record.body.decode("utf-8-sig")))
            counts.update(row["id"] for row in reader)
    return counts


def test_late_events_of_a_failed_daily_run_are_pushed_by_the_next(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(4)]
    for day in days:
        stand_in.add_events(synthetic_events(day, 30, seed=day.toordinal()))
    # Events of the first day that Pigment ingests only three hours before the third tick.
    late = synthetic_events(days[0], 7, seed=5, id_prefix="late-")
    for event in late:
        event["ingestionTimestamp"] = (tick_at(days[3]) - timedelta(hours=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
    stand_in.add_events(late)
    storage = LocalStorage(tmp_path)
    # A mark from before the first partition (its start moved later): no partition to redo.
    before_first = FIRST_DAY - timedelta(days=1)
    mark_pending(storage, before_first)
    defs = definitions(FIRST_DAY, resource=PigmentResource(**resource_settings(stand_in,
                                                                                tmp_path)))
    with dg.DagsterInstance.ephemeral() as instance:
        for day in days[1:3]:  # the ticks covering the first two days: all well
            stand_in.set_now(tick_at(day))
            assert run_job(defs, dict(one_request(defs, tick_at(day)).tags), instance).success
        # Only the day of the last tick: its scan wrote what of it was there; its own run
        # (the next tick) covers it.
        assert pending_days(storage) == [before_first, days[2]]

        # The third tick's scan files the late events into the first day; both of the run's
        # pushes (its own day, and the first day) end Failed in Pigment.
        stand_in.set_now(tick_at(days[3]))
        stand_in.fail_next_imports(2)
        failed = run_job(defs, dict(one_request(defs, tick_at(days[3])).tags), instance,
                         raise_on_error=False)
        assert not failed.success
        assert partition_metadata(failed, "raw_audit_events")[days[0].isoformat()]
        assert pending_days(storage) == [before_first, days[0], days[2], days[3]]
        assert not {event["id"] for event in late} & set(completed_ids(stand_in))

        # The next tick covers its own day and redoes the two pending ones.
        tick = tick_at(days[3] + timedelta(days=1))
        stand_in.set_now(tick)
        result = run_job(defs, dict(one_request(defs, tick).tags), instance)
        assert result.success
        assert set(partition_metadata(result, "audit_events_import")) == {
            days[0].isoformat(), days[2].isoformat(), days[3].isoformat()}
        messages = [record.user_message for record in instance.all_logs(result.run_id)]
        assert any("an earlier run changed" in message and days[0].isoformat() in message
                   for message in messages)

    # The last tick's day had no events: nothing written, nothing marked.
    assert pending_days(storage) == [before_first]
    pushed = completed_ids(stand_in)
    for day in days:
        truth = truth_ids(stand_in, day)
        assert {event_id: pushed[event_id] for event_id in truth} == dict.fromkeys(truth, 1)


def test_a_mark_goes_only_after_an_import_of_the_csv_it_was_made_for(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    day = FIRST_DAY
    mark_pending(storage, day)
    seen = read_mark(storage, day)
    assert seen is not None and not seen.csv_current
    # No CSV written under this mark yet: an import of the older CSV leaves the mark.
    assert not clear_if_pushed(storage, seen, owner="test", log=LOG)
    assert pending_days(storage) == [day]

    note_csv_written(storage, day)
    seen = read_mark(storage, day)
    assert seen is not None and seen.csv_current
    mark_pending(storage, day)  # a scan brought the day more events meanwhile
    assert not clear_if_pushed(storage, seen, owner="test", log=LOG)
    assert pending_days(storage) == [day]

    note_csv_written(storage, day)
    seen = read_mark(storage, day)
    assert seen is not None
    assert clear_if_pushed(storage, seen, owner="test", log=LOG)
    assert pending_days(storage) == [] and not storage.exists(pending_key(day))
    assert not storage.list("leases/")  # the raw lease was given back


def test_an_unreadable_mark_keeps_its_day_pending_until_rewritten(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "pending").mkdir()
    (tmp_path / pending_key(FIRST_DAY)).write_bytes(b"{not json")
    (tmp_path / "pending" / "notes.txt").write_bytes(b"not a day")
    assert pending_days(storage) == [FIRST_DAY]
    seen = read_mark(storage, FIRST_DAY)
    assert seen is not None and not clear_if_pushed(storage, seen, owner="test", log=LOG)
    note_csv_written(storage, FIRST_DAY)  # the next CSV of the day rewrites it readable
    seen = read_mark(storage, FIRST_DAY)
    assert seen is not None and clear_if_pushed(storage, seen, owner="test", log=LOG)


def daily_job() -> dg.JobDefinition:
    """The daily job over the settings in the environment (re-executing needs a job that a
    fresh process can rebuild)."""
    settings = orjson.loads(os.environ["PENDING_TEST_SETTINGS"])
    defs = definitions(FIRST_DAY, resource=PigmentResource(**settings))
    return defs.resolve_job_def(JOB)


def test_re_executing_a_failed_daily_run_from_failure_pushes_its_late_days(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(3)]
    for day in days:
        stand_in.add_events(synthetic_events(day, 20, seed=day.toordinal()))
    late = synthetic_events(days[0], 5, seed=6, id_prefix="late-")
    for event in late:
        event["ingestionTimestamp"] = (tick_at(days[2]) - timedelta(hours=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
    stand_in.add_events(late)
    monkeypatch.setenv("PENDING_TEST_SETTINGS",
                       orjson.dumps(resource_settings(stand_in, tmp_path)).decode())
    job = dg.reconstructable(daily_job)
    defs = definitions(FIRST_DAY)
    in_process = {"execution": {"config": {"in_process": {}}}}
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        stand_in.set_now(tick_at(days[1]))
        tags = dict(one_request(defs, tick_at(days[1])).tags)
        assert dg.execute_job(job, instance, run_config=in_process, tags=tags).success
        stand_in.set_now(tick_at(days[2]))
        stand_in.fail_next_imports(2)  # the run's own day and the late one
        tags = dict(one_request(defs, tick_at(days[2])).tags)
        failed = dg.execute_job(job, instance, run_config=in_process, tags=tags,
                                raise_on_error=False)
        assert not failed.success
        # With the failed run's tags, as the UI's "Re-execute from failure" gives them.
        again = dg.execute_job(job, instance, run_config=in_process, tags=tags,
                               reexecution_options=dg.ReexecutionOptions.from_failure(
                                   failed.run_id, instance))
        assert again.success
        imported = {m.partition for m in again.asset_materializations_for_node(
            "audit_events_import")}
        assert imported == {days[0].isoformat(), days[1].isoformat()}
    pushed = completed_ids(stand_in)
    for day in days[:2]:
        truth = truth_ids(stand_in, day)
        assert {event_id: pushed[event_id] for event_id in truth} == dict.fromkeys(truth, 1)


def test_an_import_that_cannot_take_the_raw_lease_to_clear_its_mark_still_succeeds(
        stand_in: PigmentStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stand_in.add_events(synthetic_events(DAY, 10, seed=3))
    pigment = PigmentResource(**resource_settings(stand_in, tmp_path, lease_wait_seconds=0))
    raw_and_csv = [asset for asset in ASSETS if asset.key.path[-1] != "audit_events_import"]
    assert dg.materialize(raw_and_csv, resources={"pigment": pigment},
                          partition_key=DAY.isoformat()).success
    storage = LocalStorage(tmp_path)
    mark_pending(storage, DAY)
    note_csv_written(storage, DAY)
    with caplog.at_level(logging.WARNING), hold_lease(
            storage, storage.raw_lease_key(DAY), "a scan elsewhere", log=LOG):
        outcome = pigment.push_day(DAY, LOG, owner="test")
    assert outcome.rows_pushed == 10
    assert pending_days(storage) == [DAY]  # the next daily run redoes it: nothing is lost
    assert "the import completed, but the day stays pending" in caplog.text
    assert "a scan elsewhere" in caplog.text


def late_world(stand_in: PigmentStandIn, count: int = 10) -> tuple[list[date], list[dict]]:
    """Four days of events, and late ones of the first day ingested three hours before the
    fourth day's tick."""
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(4)]
    for day in days:
        stand_in.add_events(synthetic_events(day, count, seed=day.toordinal()))
    late = synthetic_events(days[0], 3, seed=7, id_prefix="late-")
    for event in late:
        event["ingestionTimestamp"] = (tick_at(days[3]) - timedelta(hours=3)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
    stand_in.add_events(late)
    return days, late


def tick(defs: dg.Definitions, stand_in: PigmentStandIn, instance: dg.DagsterInstance,
         day: date) -> dg.ExecuteInProcessResult:
    """The schedule's run of the tick on ``day``, executed in process."""
    stand_in.set_now(tick_at(day))
    return run_job(defs, dict(one_request(defs, tick_at(day)).tags), instance,
                   raise_on_error=False)


def test_the_mark_is_read_before_the_push(stand_in: PigmentStandIn, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run marks the day, adds an event and rewrites the CSV while this push runs
    (after it read the CSV): the mark stays, for the import that will push that event. Read
    after the push, the new mark would have been cleared."""
    stand_in.add_events(synthetic_events(DAY, 10, seed=3))
    pigment = PigmentResource(**resource_settings(stand_in, tmp_path))
    raw_and_csv = [asset for asset in ASSETS if asset.key.path[-1] != "audit_events_import"]
    assert dg.materialize(raw_and_csv, resources={"pigment": pigment},
                          partition_key=DAY.isoformat()).success
    storage = LocalStorage(tmp_path)
    assert read_mark(storage, DAY) is not None and read_mark(storage, DAY).csv_current
    original = resources_module.push_day
    extra = synthetic_events(DAY, 1, seed=99, id_prefix="during-")[0]

    def push_then_another_scan(*args: Any, **kwargs: Any) -> Any:
        outcome = original(*args, **kwargs)
        with hold_lease(storage, storage.raw_lease_key(DAY), "another scan", log=LOG):
            mark_pending(storage, DAY)
            raw = storage.read_bytes(storage.raw_key(DAY)) or b""
            storage.write_bytes(storage.raw_key(DAY), raw + orjson.dumps(extra) + b"\n")
        write_day_csv(storage, DAY, owner="another CSV step", log=LOG)
        return outcome

    monkeypatch.setattr(resources_module, "push_day", push_then_another_scan)
    pigment.push_day(DAY, LOG, owner="test")
    assert extra["id"] not in completed_ids(stand_in)
    assert pending_days(storage) == [DAY]


def test_a_scan_killed_at_its_mark_loses_nothing(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark comes before the raw write: a scan that dies there wrote nothing and moved
    no watermark, so the next one reads the late events again. (Written after, the raw file
    would hold them unmarked, and the next scan, finding nothing new, leave the day alone.)"""
    days, late = late_world(stand_in)
    defs = definitions(FIRST_DAY, resource=PigmentResource(**resource_settings(stand_in,
                                                                                tmp_path)))
    original = collect.mark_pending

    def dies_at_the_first_day(storage: Any, day: date) -> None:
        if day == days[0]:  # the step ends there, as a kill would end it: nothing after runs
            raise RuntimeError("killed")
        original(storage, day)

    with dg.DagsterInstance.ephemeral() as instance:
        for day in days[1:3]:
            assert tick(defs, stand_in, instance, day).success
        monkeypatch.setattr(collect, "mark_pending", dies_at_the_first_day)
        assert not tick(defs, stand_in, instance, days[3]).success
        monkeypatch.setattr(collect, "mark_pending", original)
        assert tick(defs, stand_in, instance, days[3] + timedelta(days=1)).success
    pushed = completed_ids(stand_in)
    assert {event["id"]: pushed[event["id"]] for event in late} == {
        event["id"]: 1 for event in late}


def test_the_import_takes_no_pending_day_whose_csv_this_run_did_not_write(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A day another run marks between this run's CSV and import steps waits for the next
    daily run, whose CSV step writes it first."""
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(3)]
    for day in days[1:]:
        stand_in.add_events(synthetic_events(day, 10, seed=day.toordinal()))
    storage = LocalStorage(tmp_path)
    defs = definitions(FIRST_DAY, resource=PigmentResource(**resource_settings(stand_in,
                                                                                tmp_path)))
    calls = []
    original = PigmentResource.pending_days

    def listing(self: PigmentResource, **options: Any) -> list[date]:
        calls.append(options)
        if len(calls) == 2:  # between the CSV step and the import step
            with hold_lease(storage, storage.raw_lease_key(days[0]), "another scan", log=LOG):
                mark_pending(storage, days[0])
                storage.write_bytes(storage.raw_key(days[0]), b"")
        return original(self, **options)

    monkeypatch.setattr(PigmentResource, "pending_days", listing)
    with dg.DagsterInstance.ephemeral() as instance:
        result = tick(defs, stand_in, instance, days[2])
    assert result.success
    assert set(partition_metadata(result, "audit_events_import")) == {days[1].isoformat()}
    assert days[0] in pending_days(storage)


def test_a_pending_day_that_cannot_be_written_does_not_block_the_daily_import(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    days = [FIRST_DAY + timedelta(days=offset) for offset in range(4)]
    for day in days[1:]:
        stand_in.add_events(synthetic_events(day, 10, seed=day.toordinal()))
    storage = LocalStorage(tmp_path)
    mark_pending(storage, days[0])  # a scan killed between its mark and the day's first write
    defs = definitions(FIRST_DAY, resource=PigmentResource(**resource_settings(stand_in,
                                                                                tmp_path)))
    with dg.DagsterInstance.ephemeral() as instance:
        for day in days[2:]:
            result = tick(defs, stand_in, instance, day)
            assert result.success
            assert set(partition_metadata(result, "audit_events_import")) == {
                (day - timedelta(days=1)).isoformat()}
            messages = [record.user_message for record in instance.all_logs(result.run_id)]
            assert any(f"{days[0]}: still pending, its CSV could not be written" in message
                       for message in messages)
    assert days[0] in pending_days(storage)
    pushed = completed_ids(stand_in)
    for day in days[1:3]:
        truth = truth_ids(stand_in, day)
        assert {event_id: pushed[event_id] for event_id in truth} == dict.fromkeys(truth, 1)


def test_late_events_a_run_by_hand_took_in_are_pushed_by_the_next_daily_run(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """A run of the raw events alone, by hand, files late events into their day; the daily
    scan then finds nothing new there, but the day's mark brings it up."""
    days, late = late_world(stand_in)
    storage = LocalStorage(tmp_path)
    pigment = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(FIRST_DAY, resource=pigment)
    with dg.DagsterInstance.ephemeral() as instance:
        for day in days[1:3]:
            assert tick(defs, stand_in, instance, day).success
        stand_in.set_now(tick_at(days[3]) - timedelta(hours=1))
        raw_only = [asset for asset in ASSETS if asset.key.path[-1] == "raw_audit_events"]
        assert dg.materialize(raw_only, resources={"pigment": pigment}, instance=instance,
                              partition_key=days[0].isoformat()).success
        assert days[0] in pending_days(storage)
        assert tick(defs, stand_in, instance, days[3]).success
    pushed = completed_ids(stand_in)
    assert {event["id"]: pushed[event["id"]] for event in late} == {
        event["id"]: 1 for event in late}


def test_a_pending_day_whose_raw_file_fails_its_check_is_not_pushed_by_the_daily_run(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """A run of X failed its blocking raw check (X's stored file holds an event of the day
    before), so X stayed pending. Before, the next daily run wrote X's CSV and pushed it, the
    other day's event included, with green CSV and import checks."""
    day = TODAY - timedelta(days=6)
    x = day - timedelta(days=3)
    tick = tick_at(day + timedelta(days=1))
    stand_in.set_now(tick)
    for each in (x - timedelta(days=1), x, day):
        stand_in.add_events(synthetic_events(each, 20, seed=each.toordinal()))
    stray = synthetic_events(x - timedelta(days=1), 1, seed=77)[0]
    storage = LocalStorage(tmp_path)
    storage.raw_path(x).parent.mkdir(parents=True, exist_ok=True)
    storage.raw_path(x).write_bytes(orjson.dumps(stray) + b"\n")
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=60), resource=resource)
    with dg.DagsterInstance.ephemeral() as instance:
        first = dg.materialize(ASSETS, resources={"pigment": resource},
                               partition_key=x.isoformat(), instance=instance,
                               raise_on_error=False)
        assert not first.success and stand_in.pushed_rows() == []
        daily = run_job(defs, dict(one_request(defs, tick).tags), instance)
        assert x.isoformat() not in partition_metadata(daily, "audit_events_csv")
        assert x.isoformat() not in partition_metadata(daily, "audit_events_import")
        assert stray["id"] not in {row["id"] for row in stand_in.pushed_rows()}
        assert any(f"{x}: still pending, its CSV not written" in entry.user_message
                   for entry in instance.all_logs(daily.run_id))
    assert x in pending_days(storage)
