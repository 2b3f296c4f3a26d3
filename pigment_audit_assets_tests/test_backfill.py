"""Backfills at one scan's cost, the Pigment pool, the instance settings, the 180-day guard."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs.assets import POOL
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import TODAY, days_before, resource_settings
from pigment_audit_assets_tests.schedule_support import (
    NODES,
    definitions,
    partition_metadata,
    range_tags,
    raw_ids,
    run_job,
    scan_floor,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

REPOSITORY = Path(__file__).resolve().parent.parent
BACKFILL = days_before(TODAY - timedelta(days=5), 7)  # TODAY-11 .. TODAY-5
TARGET_RATIO = 1.1


def csv_ids(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


@pytest.fixture
def ephemeral() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_seven_days_in_one_launch_are_exact_at_one_scans_cost(
        stand_in: PigmentStandIn, tmp_path: Path, ephemeral: dg.DagsterInstance) -> None:
    # Events from the day before the backfill up to the stand-in's clock (TODAY-2 noon), with
    # late ones: the scan from the first day also passes the days after the range.
    for offset, day in enumerate(days_before(TODAY - timedelta(days=2), 11)):
        stand_in.add_events(synthetic_events(day, 150 + 40 * (offset % 4), seed=day.toordinal(),
                                             late_fraction=0.05))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=60), resource=resource)
    result = run_job(defs, range_tags(BACKFILL[0], BACKFILL[-1]), ephemeral)
    assert result.success
    assert len(ephemeral.get_runs()) == 1  # one launch, one run
    keys = [day.isoformat() for day in BACKFILL]
    for node in NODES:
        assert sorted(partition_metadata(result, node)) == keys, node

    storage = LocalStorage(tmp_path)
    everything: list[str] = []
    for day in BACKFILL:
        truth = truth_ids(stand_in, day)
        assert truth and sorted(raw_ids(tmp_path, day)) == truth, day
        assert csv_ids(storage.csv_path(day)) == raw_ids(tmp_path, day), day
        everything += truth
    pushed = Counter(row["id"] for row in stand_in.pushed_rows())
    assert max(pushed.values()) == 1 and sorted(pushed) == sorted(everything)
    assert not storage.raw_path(BACKFILL[-1] + timedelta(days=1)).exists()

    floor = scan_floor(stand_in, BACKFILL[0])
    requests = stand_in.request_counts["audit"]
    assert floor <= requests <= TARGET_RATIO * floor, (requests, floor)
    # The scan's figures are the run's: in its logs, not on any day's materialization.
    logs = [entry.user_message for entry in ephemeral.all_logs(result.run_id)]
    assert any(message.startswith(f"This run's audit scan, for its {len(BACKFILL)} day(s): "
                                  f"{requests} API request(s)") for message in logs)
    # For contrast: one run per day would scan from each day to now.
    one_run_per_day = sum(scan_floor(stand_in, day) for day in BACKFILL)
    assert requests * 4 < one_run_per_day, (requests, one_run_per_day)


def test_a_day_beyond_180_days_fails_before_any_request_and_keeps_its_files(
        stand_in: PigmentStandIn, tmp_path: Path, ephemeral: dg.DagsterInstance) -> None:
    old = TODAY - timedelta(days=200)
    storage = LocalStorage(tmp_path)
    kept = {storage.raw_path(old): b'{"id":"kept-1","eventTimestamp":"x"}\n',
            storage.csv_path(old): b"id\r\nkept-1\r\n",
            storage.import_record_path(old): b'{"day":"kept","imports":[]}'}
    for path, content in kept.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    stamps = {path: path.stat().st_mtime_ns for path in kept}
    stand_in.add_events(synthetic_events(TODAY - timedelta(days=5), 20, seed=1))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    defs = definitions(TODAY - timedelta(days=400), resource=resource)
    # One old day, and a range that starts beyond the lookback and ends within it.
    for first, last in ((old, old), (TODAY - timedelta(days=182), TODAY - timedelta(days=170))):
        result = run_job(defs, range_tags(first, last), ephemeral, raise_on_error=False)
        assert not result.success
        failure = next(event for event in result.all_events if event.is_step_failure)
        assert failure.step_key == "raw_audit_events"
        message = str(failure.step_failure_data.error)
        assert f"Day {first}" in message and "180 days" in message
        assert "nothing was fetched" in message and "untouched" in message
        # The CSV and import steps never ran.
        assert not result.asset_materializations_for_node("audit_events_csv")
        assert not result.asset_materializations_for_node("audit_events_import")
    assert sum(stand_in.request_counts.values()) == 0
    for path, content in kept.items():
        assert path.read_bytes() == content and path.stat().st_mtime_ns == stamps[path]
    assert not storage.raw_path(TODAY - timedelta(days=170)).exists()
    # The oldest day the guard lets through is still within reach of the stand-in too.
    recent = TODAY - timedelta(days=5)
    assert run_job(defs, range_tags(recent, recent), ephemeral).success
    assert sorted(raw_ids(tmp_path, recent)) == truth_ids(stand_in, recent)


def test_the_assets_that_call_pigment_are_in_the_pool() -> None:
    from pigment_audit_assets.definitions import defs as shipped

    pools = {node: shipped.get_assets_def(node).op.pool for node in NODES}
    assert pools == {"raw_audit_events": POOL, "audit_events_csv": None,
                     "audit_events_import": POOL}
    for node in NODES:
        policy = shipped.get_assets_def(node).backfill_policy
        assert policy == dg.BackfillPolicy.single_run(), node


@pytest.fixture
def repo_instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """An instance from a fresh DAGSTER_HOME holding the repository's dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPOSITORY / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_dagster_yaml_limits_the_pool_to_one_and_monitors_runs(
        repo_instance: dg.DagsterInstance) -> None:
    config = repo_instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1
    assert config.pool_config.pool_granularity is not None
    assert config.pool_config.pool_granularity.value == "op"
    assert repo_instance.run_monitoring_enabled
    settings = repo_instance.run_monitoring_settings
    assert settings["free_slots_after_run_end_seconds"] > 0  # slots of dead runs are freed
    assert repo_instance.run_monitoring_start_timeout_seconds > 0
    # The pool really holds one slot: a second run's step waits until the first frees it.
    storage = repo_instance.event_log_storage
    assert storage.supports_global_concurrency_limits
    storage.initialize_concurrency_limit_to_default(POOL)
    assert storage.get_concurrency_info(POOL).slot_count == 1
    assert storage.claim_concurrency_slot(POOL, "run-a", "raw_audit_events").is_claimed
    assert not storage.claim_concurrency_slot(POOL, "run-b", "raw_audit_events").is_claimed
    storage.free_concurrency_slot_for_step("run-a", "raw_audit_events")
    assert storage.claim_concurrency_slot(POOL, "run-b", "raw_audit_events").is_claimed


def test_a_run_on_the_repo_instance_goes_through_the_pool(
        stand_in: PigmentStandIn, tmp_path: Path, repo_instance: dg.DagsterInstance) -> None:
    day = TODAY - timedelta(days=5)
    stand_in.add_events(synthetic_events(day, 30, seed=3))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path / "data"))
    defs = definitions(TODAY - timedelta(days=60), resource=resource)
    assert run_job(defs, range_tags(day, day), repo_instance).success
    info = repo_instance.event_log_storage.get_concurrency_info(POOL)
    # The run's steps created the pool with the instance's default limit, and freed it.
    assert (info.slot_count, info.limit, info.active_slot_count) == (1, 1, 0)
    assert sorted(raw_ids(tmp_path / "data", day)) == truth_ids(stand_in, day)
