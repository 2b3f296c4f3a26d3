"""Audit API requests of the daily runs: the ingestion watermark against the floor, and the old
four-day re-scan, on twelve days with 10 % of events arriving 2 hours to 10 days late.

A Pigment stand-in (real HTTP on 127.0.0.1, pages of 1,000 events, newest first) serves
synthetic days of 3,000 to 12,000 events; 10 % of each day's events are ingested late, from 2
hours up to 10 days after they happened. Twelve daily ticks (04:00 UTC) run as the schedule asks,
each on its own (the schedule evaluated at the tick, its run executed in process, no daemon),
the stand-in's clock moved to each tick. For each tick it prints:

- ``requests``: the tick's Audit API requests (counted by the stand-in);
- ``floor``: the pages holding the events ingested since the previous watermark less the
  overlap (``ceil(events / page size)``): no correct scan from there can make fewer; the target
  is ``requests <= 1.1 x floor + 1``;
- ``4-day re-scan``: what the previous design's daily run read, a scan from the start of the day
  four days before yesterday (``PIGMENT_AUDIT_LOOKBACK_DAYS=4`` now): the pages of the events
  ingested since then, computed on the same data at the same tick.

Then it checks what the issue asks of the twelve days: every day exact in raw, CSV and Pigment,
each event pushed once, and prints the result. Usage:
``.venv/bin/python benchmarks/daily_requests.py`` (about a minute). Not part of the test suite;
``test_watermark.py`` asserts the same bound on smaller data.
"""

from __future__ import annotations

import csv
import math
import random
import sys
import tempfile
import warnings
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import dagster as dg
import orjson

from pigment_audit_assets.core.days import parse_timestamp
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.watermark import read_watermark
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.schedule_support import definitions, one_request, run_job
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

UTC = timezone.utc
DAYS = 12
OVERLAP = timedelta(minutes=60)
TARGET = 1.1


def _late_events(day: date, count: int, seed: int) -> list[dict]:
    """A day's events, 10 % of them ingested 2 hours to 10 days late."""
    rng = random.Random(seed)
    events = synthetic_events(day, count, seed=seed, late_fraction=0.0)
    for event in rng.sample(events, count // 10):
        happened = parse_timestamp(event["eventTimestamp"])
        delay = timedelta(seconds=rng.uniform(2 * 3600, 10 * 86400))
        event["ingestionTimestamp"] = (happened + delay).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return events


def _pages(stand_in: PigmentStandIn, since: datetime) -> int:
    count = sum(1 for event in stand_in.visible_events()
                if parse_timestamp(event["ingestionTimestamp"]) >= since)
    return math.ceil(count / stand_in.page_size)


def main() -> int:
    """Run the twelve ticks and print the figures."""
    warnings.simplefilter("ignore")
    today = datetime.now(UTC).date()
    first = today - timedelta(days=DAYS + 2)
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as folder, PigmentStandIn(
            audit_key="bench-audit", import_key="bench-import",
            configuration_ids=("bench-config",), page_size=1000) as stand_in:
        root = Path(folder)
        for offset in range(-3, DAYS + 1):
            day = first + timedelta(days=offset)
            stand_in.add_events(_late_events(day, rng.randint(3_000, 12_000), offset + 100))
        resource = PigmentResource(
            audit_api_key="bench-audit", import_api_key="bench-import",
            import_configuration_id="bench-config", base_url=stand_in.base_url,
            storage_url=str(root), import_poll_seconds=0.05, requests_per_window=1_000_000,
            window_seconds=1.0)
        defs = definitions(first, resource=resource)
        storage = LocalStorage(root)
        print(f"{'tick':<17} {'requests':>8} {'floor':>6} {'target':>7} {'4-day re-scan':>14}")
        within = True
        with dg.DagsterInstance.ephemeral() as instance:
            for offset in range(1, DAYS + 1):
                tick = datetime.combine(first + timedelta(days=offset), time(4), tzinfo=UTC)
                stand_in.set_now(tick)
                yesterday = tick.date() - timedelta(days=1)
                state = read_watermark(storage)
                since = (state.ingested_up_to - OVERLAP if state.ingested_up_to else
                         datetime.combine(yesterday, time(0), tzinfo=UTC))
                floor = _pages(stand_in, since)
                old = _pages(stand_in, datetime.combine(
                    max(first, yesterday - timedelta(days=3)), time(0), tzinfo=UTC))
                before = stand_in.request_counts["audit"]
                assert run_job(defs, dict(one_request(defs, tick).tags), instance).success
                requests = stand_in.request_counts["audit"] - before
                within &= requests <= TARGET * floor + 1
                print(f"{tick:%Y-%m-%d %H:%M} {requests:>8} {floor:>6} "
                      f"{TARGET * floor + 1:>7.1f} {old:>14}")
        pushed = Counter(row["id"] for row in stand_in.pushed_rows())
        exact = max(pushed.values()) == 1
        for offset in range(DAYS):
            day = first + timedelta(days=offset)
            truth = sorted(e["id"] for e in stand_in.visible_events(event_day=day))
            raw = [orjson.loads(line)["id"] for line in
                   storage.raw_path(day).read_bytes().splitlines()]
            with open(storage.csv_path(day), newline="", encoding="utf-8") as handle:
                rows = [row["id"] for row in csv.DictReader(handle)]
            exact &= sorted(raw) == truth and rows == raw and all(i in pushed for i in truth)
        print(f"every tick within 1.1 x floor + 1: {within}")
        print(f"{DAYS} days exact in raw, CSV and Pigment, each event pushed once: {exact}")
    return 0 if within and exact else 1


if __name__ == "__main__":
    sys.exit(main())
