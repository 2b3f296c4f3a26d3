"""Audit API requests of a backfill: one ranged run against the floor, and one run per day.

For a 7-day and a 30-day range, a Pigment stand-in (real HTTP on 127.0.0.1, pages of 1000 events,
newest first) serves synthetic days of 3,000 to 20,000 events (busy weekdays, quiet weekends) with
2 % of events ingested up to two days late, from two days before the range up to the stand-in's
clock (06:00 UTC today). The backfill is materialized for real, as Dagster runs it under the
assets' single-run backfill policy: one run of the raw asset over the whole range (``dagster
materialize`` with the range tags). It prints:

- ``requests``: Audit API requests that run made (counted by the stand-in);
- ``floor``: the pages that hold the events ingested since the start of the first day,
  ``ceil(events / page size)``: no correct scan of that range can make fewer requests;
- ``ratio`` = requests / floor (the target is at most 1.1);
- ``per-day runs``: what a backfill of one run per day would cost, each run scanning from its day
  to now: the sum of each day's floor. For the 7-day range it is also measured, by running the
  seven one-day runs for real; for the 30-day range it is computed (the measured 7-day figure
  shows that a scan costs exactly its floor).

Usage: ``.venv/bin/python benchmarks/backfill_requests.py`` (about a minute on two cores).
Not part of the test suite; the tests assert the same bound on smaller data.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
import tempfile
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.defs.assets import build_assets
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import iter_synthetic_events

UTC = timezone.utc
AUDIT_KEY = "bench-audit-key"
IMPORT_KEY = "bench-import-key"
LATE_FRACTION = 0.02
TARGET = 1.1
# The stand-in has no budget here; without this the client's own pacer (Pigment's 500 requests
# per 5 minutes) would make the benchmark wait instead of measure.
UNPACED = {"requests_per_window": 1_000_000, "window_seconds": 1.0}


def daily_volume(day: date, rng: random.Random) -> int:
    """Events of a day: 12,000-20,000 on weekdays, 3,000-5,000 at weekends."""
    if day.weekday() >= 5:
        return rng.randint(3_000, 5_000)
    return rng.randint(12_000, 20_000)


def load_days(stand_in: PigmentStandIn, first: date, last: date, seed: int) -> int:
    """Serve synthetic events for every day from ``first`` to ``last``; how many."""
    rng = random.Random(seed)
    total = 0
    day = first
    while day <= last:
        events = list(iter_synthetic_events(day, daily_volume(day, rng), seed=seed,
                                            late_fraction=LATE_FRACTION))
        stand_in.add_events(events)
        total += len(events)
        day += timedelta(days=1)
    return total


class Floors:
    """Floors of scans from given days, over the events the stand-in shows (read once)."""

    def __init__(self, stand_in: PigmentStandIn) -> None:
        # Ingestion timestamps are ISO-8601 UTC with milliseconds and Z: they sort as text.
        self.ingested = sorted(event["ingestionTimestamp"]
                               for event in stand_in.visible_events())
        self.page_size = stand_in.page_size

    def pages_since(self, day: date) -> int:
        """ceil(visible events ingested since the start of ``day`` (UTC) / page size)."""
        since = f"{day.isoformat()}T00:00:00.000Z"
        ingested = len(self.ingested) - bisect.bisect_left(self.ingested, since)
        return math.ceil(ingested / self.page_size)


def materialize_raw(assets: list[dg.AssetsDefinition], resource: PigmentResource,
                    first: date, last: date) -> None:
    """One run of the raw asset over ``first``..``last`` (the single-run backfill's run)."""
    result = dg.materialize(
        [assets[0]], resources={"pigment": resource},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        tags={ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
              ASSET_PARTITION_RANGE_END_TAG: last.isoformat()},
    )
    if not result.success:
        raise SystemExit(f"the run over {first}..{last} failed")


def measure(days: int, page_size: int, seed: int, measure_per_day: bool) -> dict[str, object]:
    """Run one range and return its figures."""
    today = datetime.now(UTC).date()
    last = today - timedelta(days=2)
    first = last - timedelta(days=days - 1)
    now = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=6)
    partitions = dg.DailyPartitionsDefinition(start_date=(first - timedelta(days=5)).isoformat(),
                                              end_offset=0)
    assets = build_assets(partitions)
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY, page_size=page_size,
                        now=now) as stand_in, tempfile.TemporaryDirectory() as root:
        started = time.monotonic()
        events = load_days(stand_in, first - timedelta(days=2), today, seed)
        resource = PigmentResource(audit_api_key=AUDIT_KEY, base_url=stand_in.base_url,
                                   storage_url=str(Path(root) / "range"), **UNPACED)
        materialize_raw(assets, resource, first, last)
        requests = stand_in.request_counts["audit"]
        floors = Floors(stand_in)
        floor = floors.pages_since(first)
        per_day_computed = sum(floors.pages_since(first + timedelta(days=offset))
                               for offset in range(days))
        per_day_measured = None
        if measure_per_day:
            stand_in.reset_counters()
            per_day = PigmentResource(audit_api_key=AUDIT_KEY, base_url=stand_in.base_url,
                                      storage_url=str(Path(root) / "per_day"), **UNPACED)
            for offset in range(days):
                day = first + timedelta(days=offset)
                materialize_raw(assets, per_day, day, day)
            per_day_measured = stand_in.request_counts["audit"]
        return {
            "days": days, "range": f"{first}..{last}", "events_served": events,
            "requests": requests, "floor": floor, "ratio": requests / floor,
            "per_day_computed": per_day_computed, "per_day_measured": per_day_measured,
            "seconds": time.monotonic() - started,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = [measure(7, args.page_size, args.seed, measure_per_day=True),
            measure(30, args.page_size, args.seed, measure_per_day=False)]
    print(f"\nAudit API requests of a backfill (page size {args.page_size}, late fraction "
          f"{LATE_FRACTION:.0%}, target ratio <= {TARGET})\n")
    header = (f"{'range':>6} {'events served':>14} {'requests':>9} {'floor':>6} {'ratio':>6}"
              f" {'per-day runs':>13} {'per-day / one run':>18} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    ok = True
    for row in rows:
        measured = row["per_day_measured"]
        per_day = measured if measured is not None else row["per_day_computed"]
        label = f"{per_day} ({'measured' if measured is not None else 'computed'})"
        ratio = float(row["ratio"])  # type: ignore[arg-type]
        ok = ok and ratio <= TARGET
        print(f"{str(row['days']) + ' d':>6} {row['events_served']:>14,} {row['requests']:>9} "
              f"{row['floor']:>6} {ratio:>6.3f} {label:>13} "
              f"{int(per_day) / int(row['requests']):>17.1f}x "  # type: ignore[call-overload]
              f"{float(row['seconds']):>8.1f}")  # type: ignore[arg-type]
        if measured is not None and measured != row["per_day_computed"]:
            print(f"  note: per-day runs measured {measured}, computed "
                  f"{row['per_day_computed']}")
    print("\nranges:", ", ".join(f"{row['days']} d = {row['range']}" for row in rows))
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
