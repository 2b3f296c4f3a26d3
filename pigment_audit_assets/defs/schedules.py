"""The daily schedule: the last complete day, scanned from the ingestion watermark.

Pigment ingests some events hours or days late. Each morning's run materializes yesterday and
scans what Pigment ingested since the previous scan (the watermark, less an overlap): every
late event goes into the raw file of its own day, whatever its age, and each older day that
gained events gets its raw file, CSV and import re-done in the same run, with a materialization
of its own (see the assets). ``lookback_days`` (default 0) adds complete days that the run also
re-scans in full, from their start: ``[yesterday - (lookback_days - 1), yesterday]``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from ..core.days import AUDIT_LOOKBACK, day_start, parse_zone
from ..core.errors import ConfigError
from .assets import FULL_RESCAN_TAG, INCREMENTAL, SCAN_TAG

HOUR_VARIABLE = "PIGMENT_AUDIT_SCHEDULE_HOUR"
LOOKBACK_VARIABLE = "PIGMENT_AUDIT_LOOKBACK_DAYS"
DEFAULT_HOUR = 4
DEFAULT_LOOKBACK_DAYS = 0
# A scheduled run may wait in the queue (or for the Pigment pool, behind a long backfill) before
# its scan starts; a day kept in the range must still be within the 180 days by then.
LOOKBACK_MARGIN = timedelta(hours=12)


def scheduled_days(run_at: datetime, first_partition: date, zone_name: str,
                   lookback_days: int) -> tuple[date, date] | None:
    """The range a run at ``run_at`` covers: the last complete day, and with ``lookback_days``
    N ≥ 2 the N - 1 days before it (N days re-scanned in full from their start).

    Clipped to the first partition and to what Pigment's 180-day lookback still reaches
    (with :data:`LOOKBACK_MARGIN` to spare); None when no complete day exists yet.
    """
    zone = parse_zone(zone_name)
    local = run_at.astimezone(zone)
    last = local.date() - timedelta(days=1)
    if last < first_partition:
        return None
    first = max(first_partition, last - timedelta(days=max(lookback_days - 1, 0)))
    oldest_start = run_at - AUDIT_LOOKBACK + LOOKBACK_MARGIN
    while first <= last and day_start(first, zone) < oldest_start:
        first += timedelta(days=1)
    if first > last:
        return None
    return first, last


def _int_setting(raw: str | None, variable: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{variable}={raw!r} must be a whole number from {low} to {high}.")
    return value


def schedule_settings(hour: str | None, lookback: str | None) -> tuple[int, int]:
    """Validated ``(hour, lookback_days)`` from their environment variables' values."""
    return (_int_setting(hour, HOUR_VARIABLE, DEFAULT_HOUR, 0, 23),
            _int_setting(lookback, LOOKBACK_VARIABLE, DEFAULT_LOOKBACK_DAYS, 0, 30))


def build_daily_schedule(job: dg.UnresolvedAssetJobDefinition,
                         partitions_def: dg.TimeWindowPartitionsDefinition, *,
                         hour: int = DEFAULT_HOUR,
                         lookback_days: int = DEFAULT_LOOKBACK_DAYS,
                         name: str = "pigment_audit_daily") -> dg.ScheduleDefinition:
    """A schedule ``name`` running ``job`` daily at ``hour`` in the partitions' zone."""
    zone_name = partitions_def.timezone
    first_partition = partitions_def.start.date()

    @dg.schedule(
        name=name, job=job, cron_schedule=f"0 {hour} * * *",
        execution_timezone=zone_name, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"At {hour:02d}:00 ({zone_name}): yesterday, and every older day that "
                    "gained late events, in one run that scans from the ingestion watermark"
                    + (f"; the last {lookback_days} day(s) re-scanned in full."
                       if lookback_days else "."),
    )
    def pigment_audit_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        run_at = context.scheduled_execution_time
        days = scheduled_days(run_at, first_partition, zone_name, lookback_days)
        if days is None:
            return dg.SkipReason("No complete day after the first partition yet.")
        first, last = days
        tags = {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                ASSET_PARTITION_RANGE_END_TAG: last.isoformat(), SCAN_TAG: INCREMENTAL}
        if lookback_days:
            tags[FULL_RESCAN_TAG] = first.isoformat()
        return dg.RunRequest(run_key=last.isoformat(), tags=tags)

    return pigment_audit_daily
