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
