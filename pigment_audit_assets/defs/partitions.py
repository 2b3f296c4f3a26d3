"""The daily partitions: one per day in the configured zone, from the configured start date."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg

from ..core.days import parse_day, parse_zone
from ..core.errors import ConfigError

START_DATE_VARIABLE = "PIGMENT_AUDIT_START_DATE"
TIMEZONE_VARIABLE = "PIGMENT_AUDIT_TIMEZONE"


def default_start_date(zone_name: str, today: date | None = None) -> date:
    """The oldest day Pigment's 180-day lookback still reaches entirely: today - 179 days."""
    today = today or datetime.now(parse_zone(zone_name)).date()
    return today - timedelta(days=179)


def daily_partitions(start: str | None, zone_name: str = "UTC") -> dg.DailyPartitionsDefinition:
    """Daily partitions from ``start`` (``YYYY-MM-DD``), the last one being yesterday."""
    zone = parse_zone(zone_name, TIMEZONE_VARIABLE)
    today = datetime.now(zone).date()
    first = parse_day(start, START_DATE_VARIABLE) if start else default_start_date(zone_name)
    if first >= today:
        raise ConfigError(f"{START_DATE_VARIABLE}={first} is not in the past: the first "
                          f"partition must be a complete day before today ({today}).")
    return dg.DailyPartitionsDefinition(start_date=first.isoformat(), timezone=zone_name,
                                        end_offset=0)


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    """The days a run covers: one, or a range in a single-run backfill."""
    keys = context.partition_keys
    return [date.fromisoformat(key) for key in keys]


def first_partition(context: dg.AssetExecutionContext) -> date:
    """The asset's first daily partition."""
    partitions_def = context.assets_def.partitions_def
    assert partitions_def is not None
    return date.fromisoformat(partitions_def.get_first_partition_key() or "")


def days_materialized_in_run(context: dg.AssetExecutionContext, asset_key: dg.AssetKey
                             ) -> list[date]:
    """The days of ``asset_key`` this run materialized, its own partitions and others.

    The daily run's scan places late events in older days beyond the run's partition and
    records a materialization for each; the downstream steps follow those days.
    """
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    days = {date.fromisoformat(event.partition) for event in
            (record.event_log_entry.dagster_event for record in records)
            if event is not None and event.asset_key == asset_key and event.partition}
    return sorted(days)
