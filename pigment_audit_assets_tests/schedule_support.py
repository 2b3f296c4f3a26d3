"""Helpers shared by the schedule, late-event, backfill and dagster-dev tests (no fixtures here)."""

from __future__ import annotations

import math
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import orjson
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.days import day_start
from pigment_audit_assets.defs.assets import GROUP, build_assets
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets.defs.schedules import (
    DEFAULT_HOUR,
    DEFAULT_LOOKBACK_DAYS,
    build_daily_schedule,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn

UTC = timezone.utc
SCHEDULE = "pigment_audit_daily"
JOB = "pigment_audit_job"
NODES = ("raw_audit_events", "audit_events_csv", "audit_events_import")


def definitions(start: date, zone: str = "UTC", *, hour: int = DEFAULT_HOUR,
                lookback_days: int = DEFAULT_LOOKBACK_DAYS,
                resource: PigmentResource | None = None) -> dg.Definitions:
    """Assets, job and schedule as ``definitions.py`` builds them, over fixed partitions."""
    partitions_def = dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone=zone,
                                                  end_offset=0)
    job = dg.define_asset_job(JOB, selection=dg.AssetSelection.groups(GROUP))
    schedule = build_daily_schedule(job, partitions_def, hour=hour, lookback_days=lookback_days)
    return dg.Definitions(assets=build_assets(partitions_def), jobs=[job], schedules=[schedule],
                          resources={"pigment": resource or PigmentResource()})


def evaluate(defs: dg.Definitions, at: datetime) -> list[dg.RunRequest] | str:
    """The schedule's run requests for a tick at ``at``, or its skip message."""
    schedule = defs.resolve_schedule_def(SCHEDULE)
    context = dg.build_schedule_context(scheduled_execution_time=at,
                                        repository_def=defs.get_repository_def())
    data = schedule.evaluate_tick(context)
    if not data.run_requests:
        assert data.skip_message
        return data.skip_message
    return list(data.run_requests)


def one_request(defs: dg.Definitions, at: datetime) -> dg.RunRequest:
    """The single run request of a tick."""
    requests = evaluate(defs, at)
    assert isinstance(requests, list) and len(requests) == 1, requests
    return requests[0]


def requested_range(defs: dg.Definitions, at: datetime) -> tuple[str, str]:
    """First and last partition keys the tick at ``at`` asks for."""
    tags = one_request(defs, at).tags
    return tags[ASSET_PARTITION_RANGE_START_TAG], tags[ASSET_PARTITION_RANGE_END_TAG]


def range_tags(first: date, last: date) -> dict[str, str]:
    """The run tags of a single-run backfill over ``first``..``last``."""
    return {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
            ASSET_PARTITION_RANGE_END_TAG: last.isoformat()}


def run_job(defs: dg.Definitions, tags: dict[str, str], instance: dg.DagsterInstance,
            raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """Execute the asset job in process with the given run tags."""
    return defs.resolve_job_def(JOB).execute_in_process(tags=tags, instance=instance,
                                                        raise_on_error=raise_on_error)


def partition_metadata(result: dg.ExecuteInProcessResult, node: str) -> dict[str, dict]:
    """Per-partition metadata values of one asset's materializations in a run."""
    return {m.partition or "": {key: getattr(value, "value", value)
                                for key, value in m.metadata.items()}
            for m in result.asset_materializations_for_node(node)}


def raw_ids(root: Path, day: date) -> list[str]:
    """Event ids of a day's raw file, in file order."""
    path = root / "raw" / f"{day.isoformat()}.jsonl"
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def truth_ids(stand_in: PigmentStandIn, day: date, zone: str = "UTC") -> list[str]:
    """Sorted ids of the events of ``day`` the stand-in currently shows."""
    return sorted(event["id"] for event in stand_in.visible_events(event_day=day, tz=zone))


def scan_floor(stand_in: PigmentStandIn, first: date, zone: str = "UTC") -> int:
    """Pages that hold the visible events ingested since the start of ``first``: a scan's floor."""
    since = day_start(first, ZoneInfo(zone))
    ingested = sum(
        1 for event in stand_in.visible_events()
        if datetime.fromisoformat(event["ingestionTimestamp"].replace("Z", "+00:00")) >= since)
    return math.ceil(ingested / stand_in.page_size)
