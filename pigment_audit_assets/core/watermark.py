"""The ingestion watermark: up to which ingestion time the daily scans have seen everything.

The Audit API pages by ingestion time, and ``ingestedSince`` is an ingestion bound, so the
natural unit of incremental work is "everything ingested since the last scan". After a daily
scan has written every day file, the watermark moves to the newest ``ingestionTimestamp`` that
scan saw. It comes from Pigment's own timestamps rather than this machine's clock, so a skewed
clock cannot move it past events Pigment has not shown yet; the next scan starts an *overlap*
before it (``watermark_overlap_minutes``, default 60), for events Pigment makes visible a little
after others ingested later (the overlap only costs re-reading duplicates, which collapse).

It lives with the data (``watermark.json`` beside the day files), so it moves with the storage
and survives on object storage; it is written whole or not at all, with a conditional replace,
and only ever moves forward. It is written after the day files, so a scan killed half-way
leaves it where it was: the next scan reads the same events again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from .days import parse_timestamp
from .errors import ConfigError
from .storage import Storage

WATERMARK_KEY = "watermark.json"
WATERMARK_VERSION = 1


@dataclass
class WatermarkState:
    """What the storage holds: ``ingested_up_to`` is None when absent or unreadable."""

    ingested_up_to: datetime | None
    version: str | None  # for the conditional replace; None when there is no file
    problem: str | None = None  # why an existing file could not be read


def read_watermark(storage: Storage) -> WatermarkState:
    """The stored watermark. A file from a newer version of this project is refused."""
    current = storage.read_versioned(WATERMARK_KEY)
    if current is None:
        return WatermarkState(None, None)
    data, version = current
    try:
        body = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if int(body.get("version", 0)) > WATERMARK_VERSION:
            raise ConfigError(
                f"{storage.uri(WATERMARK_KEY)} was written by a newer version of "
                f"pigment_audit_assets (format {body['version']}, this one reads "
                f"{WATERMARK_VERSION}): upgrade this deployment. Nothing was fetched or written.")
        moment = parse_timestamp(body["ingestedUpTo"])
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as error:
        return WatermarkState(None, version, problem=f"{type(error).__name__}: {error}")
    return WatermarkState(moment.astimezone(timezone.utc), version)


def advance_watermark(storage: Storage, state: WatermarkState, seen: datetime | None,
                      *, attempts: int = 5) -> datetime | None:
    """Move the watermark forward to ``seen`` (never back); returns what it now is.

    Conditional on the file not having changed since ``state`` was read; if another run moved
    it meanwhile, the later of the two wins.
    """
    for _ in range(attempts):
        target = max(filter(None, (state.ingested_up_to, seen)), default=None)
        if target is None or (state.ingested_up_to == target and state.problem is None):
            return state.ingested_up_to
        data = orjson.dumps({"version": WATERMARK_VERSION,
                             "ingestedUpTo": target.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                            option=orjson.OPT_INDENT_2)
        if state.version is None:
            if storage.create(WATERMARK_KEY, data):
                return target
        elif storage.replace(WATERMARK_KEY, data, state.version):
            return target
        state = read_watermark(storage)
    raise ConfigError(f"{storage.uri(WATERMARK_KEY)} kept changing while this run wrote it: "
                      "another run is scanning the same storage; run this one again.")
