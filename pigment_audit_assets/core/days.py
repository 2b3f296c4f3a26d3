"""Days in a time zone: their windows, and which day an event belongs to."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError, LookbackError

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

# Pigment: "The maximum lookback period for each API query is 180 days prior to the date of query".
AUDIT_LOOKBACK = timedelta(days=180)


def parse_zone(name: str, variable: str = "PIGMENT_AUDIT_TIMEZONE") -> ZoneInfo:
    """The IANA zone ``name``; a :class:`ConfigError` naming ``variable`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as error:
        raise ConfigError(
            f"{variable}={name!r} is not a known IANA time zone (for example 'UTC' or "
            f"'Europe/Paris')."
        ) from error


def parse_day(text: str, variable: str) -> date:
    """A ``YYYY-MM-DD`` day; a :class:`ConfigError` naming ``variable`` otherwise."""
    try:
        return date.fromisoformat(text)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{variable}={text!r} is not a date in YYYY-MM-DD form.") from error


def parse_timestamp(text: object) -> datetime:
    """Parse an ISO-8601 event timestamp into an aware datetime.

    A timestamp without an offset is taken as UTC, which is what Pigment sends.
    Raises ``ValueError`` when ``text`` is not an ISO-8601 timestamp string.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a timestamp string: {text!r}")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def epoch_microseconds(moment: datetime) -> int:
    """Exact microseconds since the Unix epoch (no float rounding), for sorting events."""
    return (moment - EPOCH) // ONE_MICROSECOND


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of ``day`` in ``zone``, as an aware UTC datetime."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def day_of(moment: datetime, zone: ZoneInfo) -> date:
    """The day in ``zone`` on which ``moment`` falls."""
    return moment.astimezone(zone).date()


def days_between(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    if last < first:
        raise ValueError(f"the last day {last} is before the first day {first}")
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def format_ingested_since(moment: datetime) -> str:
    """``ingestedSince`` for the Audit API: an ISO-8601 UTC timestamp ending in Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_lookback(first_day: date, zone: ZoneInfo, now: datetime) -> None:
    """Refuse, before any request, a day whose start lies beyond the Audit API's 180 days."""
    oldest_reachable = now - AUDIT_LOOKBACK
    if day_start(first_day, zone) < oldest_reachable:
        raise LookbackError(
            f"Day {first_day} starts more than 180 days before now ({now:%Y-%m-%d %H:%M} UTC): "
            "Pigment's Audit API cannot reach it, so nothing was fetched and the files already "
            "stored for it were left untouched."
        )
