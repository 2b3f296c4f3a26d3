"""The Dagster assets side by side with the community script and ``pigment-audit``, in one run.

Same method as ``bench.py`` (the stand-in in its own process on loopback, each measured program
a child under ``rusage.py``: CPU = user + system, peak RSS = ``ru_maxrss``), same day, same
events, alternating runs:

1. One day of ``--events`` events (default 100,000), API -> raw -> CSV, ``--runs`` times each:
   the community script; ``pigment-audit``; ``dagster asset materialize`` of
   ``raw_audit_events`` and ``audit_events_csv`` (with their checks) on the day's partition,
   each run in a fresh storage folder and a fresh ``DAGSTER_HOME``; the same in an existing
   instance (a copy of one a run of the next day created, unmeasured), as a deployment's
   runs are: no instance database to create. And the two start-ups the
   target is stated against: ``dagster asset list`` on the project (Dagster's start-up with the
   project loaded) and ``pigment-audit --help`` (the command line's imports). Printed: medians,
   script / Dagster, and each program's work beyond its own start-up, Dagster's over the
   command line's.
2. A day of ``--big-events`` events (default 1,000,000, 2,000 a page) through all three assets
   (fetch, CSV, import into the stand-in, with the import record and every check): peak RSS,
   next to ``dagster asset list``'s.

``--quick``: 20,000 / 100,000 events, 2 runs. Not part of the test suite; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # the sibling benchmark's helpers
    COMMAND,
    COMMUNITY_SCRIPT,
    CONFIGURATION_ID,
    ROOT,
    Run,
    StandIn,
    child_env,
    community,
    measure,
    ours,
    rows_by_id,
)

DAGSTER = Path(sys.executable).with_name("dagster")
MODULE = "pigment_audit_assets.definitions"
RAW_AND_CSV = "raw_audit_events,audit_events_csv"
ALL_THREE = "raw_audit_events,audit_events_csv,audit_events_import"


def dagster_env(base: dict[str, str], home: Path, storage: Path, day: str) -> dict[str, str]:
    """The environment of one Dagster command: its own instance and storage folder."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's instance settings
    return dict(base, DAGSTER_HOME=str(home), PIGMENT_AUDIT_STORAGE_URL=str(storage),
                PIGMENT_AUDIT_START_DATE=day, PIGMENT_IMPORT_CONFIGURATION_ID=CONFIGURATION_ID)


def materialize(day: str, selection: str) -> list[str]:
    """``dagster asset materialize`` of ``selection`` on the day's partition."""
    return [str(DAGSTER), "asset", "materialize", "-m", MODULE, "--select", selection,
            "--partition", day]


def asset_list() -> list[str]:
    """Dagster's start-up with the project loaded."""
    return [str(DAGSTER), "asset", "list", "-m", MODULE]


def cli_startup() -> list[str]:
    """The command line's start-up: its imports and argument parsing."""
    return [str(COMMAND), "--help"]


def median(runs: list[Run]) -> float:
    """Median CPU seconds."""
    return statistics.median(run.cpu for run in runs)


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the benchmark")
    parser.add_argument("--events", type=int, help="events of the compared day (100,000)")
    parser.add_argument("--runs", type=int, help="runs of each program (5)")
    parser.add_argument("--big-events", type=int, help="events of the memory day (1,000,000)")
    parser.add_argument("--skip-big", action="store_true", help="only the CPU comparison")
    parser.add_argument("--skip-cpu", action="store_true", help="only the memory day")
    parser.add_argument("--keep", type=Path, help="keep the work files in this folder")
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 100_000)
    runs = args.runs or (2 if args.quick else 5)
    big_events = args.big_events or (100_000 if args.quick else 1_000_000)
    if not COMMUNITY_SCRIPT.exists():
        print(f"The community script is not at {COMMUNITY_SCRIPT}.", file=sys.stderr)
        return 1
    day = (datetime.now(timezone.utc) - timedelta(days=3)).date().isoformat()
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; day {day}; load average "
          f"{os.getloadavg()[0]:.1f}")
    scratch = Path(tempfile.mkdtemp(prefix="pigment-bench-dagster-"))
    try:
        if not args.skip_cpu:
            cpu_comparison(day, events, runs, scratch)
        if not args.skip_big:
            big_day(day, big_events, scratch)
    finally:
        if args.keep:
            shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def cpu_comparison(day: str, events: int, runs: int, scratch: Path) -> None:
    """[1]: the five commands, alternately, against one stand-in."""
    print(f"\n[1] one day of {events:,} events, API -> raw -> CSV, {runs} runs each "
          "(stand-in starting...)", flush=True)
    names = ("community script", "pigment-audit", "dagster raw+CSV", "dagster asset list",
             "pigment-audit --help", "dagster, next day", "pigment-audit, next day",
             "dagster, existing home")
    # The next day holds only the few events of the day ingested after its midnight: a run of
    # either program on it is its start-up plus the fixed work of one run (for Dagster: the
    # run's storage, events and check evaluations), the other "equivalent start-up".
    next_day = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
    results: dict[str, list[Run]] = {name: [] for name in names}
    server = StandIn(day, events, scratch)
    try:
        base = child_env(server.base_url)
        existing = scratch / "existing-home"  # an instance as a deployment has one: created
        measure(materialize(next_day, RAW_AND_CSV), dagster_env(
            base, existing, scratch / "existing-store", day), scratch / "existing.log")
        for attempt in range(runs):
            folder = scratch / f"run-{attempt}"
            folder.mkdir()
            shutil.copytree(existing, folder / "home-existing")
            commands = {
                "community script": (community(day, folder / "community.csv"), base),
                "pigment-audit": (ours(day, folder / "pigment-audit.csv"), base),
                "dagster raw+CSV": (materialize(day, RAW_AND_CSV), dagster_env(
                    base, folder / "home", folder / "store", day)),
                "dagster asset list": (asset_list(), dagster_env(
                    base, folder / "home-list", folder / "store-list", day)),
                "pigment-audit --help": (cli_startup(), base),
                "dagster, next day": (materialize(next_day, RAW_AND_CSV), dagster_env(
                    base, folder / "home-next", folder / "store-next", day)),
                "pigment-audit, next day": (ours(next_day, folder / "next.csv"), base),
                "dagster, existing home": (materialize(day, RAW_AND_CSV), dagster_env(
                    base, folder / "home-existing", folder / "store-existing", day)),
            }
            for name in names:
                argv, env = commands[name]
                run = measure(argv, env, folder / f"{name.split()[0]}-{len(name)}.log")
                results[name].append(run)
                print(f"    {name:21} run {attempt + 1}: cpu {run.cpu:6.2f} s  wall "
                      f"{run.wall:6.2f} s  peak RSS {run.peak_rss_mb:7.1f} MB", flush=True)
        first = scratch / "run-0"
        theirs = rows_by_id(first / "community.csv")
        dagster_csv = first / "store" / "csv" / f"{day}.csv"
        same_cli = theirs == rows_by_id(first / "pigment-audit.csv")
        same_dagster = theirs == rows_by_id(dagster_csv)
        same_existing = (dagster_csv.read_bytes()
                         == (first / "store-existing" / "csv" / f"{day}.csv").read_bytes())
        print(f"    same cells as the script: pigment-audit {same_cli}, dagster {same_dagster} "
              f"({len(theirs[1]):,} rows); existing home's CSV the same bytes: {same_existing}")
    finally:
        server.stop()
    script, cli, assets = (median(results[name]) for name in names[:3])
    dagster_start, cli_start = median(results[names[3]]), median(results[names[4]])
    dagster_next, cli_next = median(results[names[5]]), median(results[names[6]])
    in_existing = median(results[names[7]])
    print(f"\n    {'median of ' + str(runs):24} {'CPU s':>8} {'beyond start-up':>16} "
          f"{'peak MB':>8}")
    for name, value, start in ((names[0], script, None), (names[1], cli, cli_start),
                               (names[2], assets, dagster_start), (names[3], dagster_start, None),
                               (names[4], cli_start, None), (names[5], dagster_next, None),
                               (names[6], cli_next, None), (names[7], in_existing, dagster_start)):
        beyond = f"{value - start:16.2f}" if start is not None else f"{'':16}"
        print(f"    {name:24} {value:8.2f} {beyond} "
              f"{max(run.peak_rss_mb for run in results[name]):8.1f}")
    print(f"    script / dagster raw+CSV: {script / assets:.2f}x (target >= 3x); "
          f"script / pigment-audit: {script / cli:.2f}x")
    print(f"    dagster beyond its start-up / pigment-audit beyond its start-up: "
          f"{(assets - dagster_start) / (cli - cli_start):.2f}x (target <= 1.1x); "
          f"beyond a run of the next day: {assets - dagster_next:.2f} s / "
          f"{cli - cli_next:.2f} s = {(assets - dagster_next) / (cli - cli_next):.2f}x")
    print(f"    in an existing instance: script / dagster {script / in_existing:.2f}x; beyond "
          f"start-up {(in_existing - dagster_start) / (cli - cli_start):.2f}x the command line's",
          flush=True)


def big_day(day: str, big_events: int, scratch: Path) -> None:
    """[2]: the big day through all three assets, against Dagster's start-up."""
    print(f"\n[2] one day of {big_events:,} events, 2,000 a page, dagster fetch + CSV + import "
          "(stand-in starting...)", flush=True)
    folder = scratch / "big"
    server = StandIn(day, big_events, scratch, page_size=2000)
    try:
        base = child_env(server.base_url)
        start = measure(asset_list(), dagster_env(base, folder / "home-list", folder / "s", day),
                        scratch / "big-list.log")
        # The stand-in has no rate limit: the pacer's budget is raised past the fetch's 500
        # requests, so that the push and its polls do not sit out a 5-minute window.
        config = '{"resources": {"pigment": {"config": {"requests_per_window": 1000}}}}'
        run = measure([*materialize(day, ALL_THREE), "--config-json", config],
                      dagster_env(base, folder / "home", folder / "store", day),
                      scratch / "big-run.log")
    finally:
        server.stop()
    csv_path = folder / "store" / "csv" / f"{day}.csv"
    record = folder / "store" / "imports" / f"{day}.json"
    print(f"    dagster asset list:         cpu {start.cpu:6.2f} s  peak RSS "
          f"{start.peak_rss_mb:7.1f} MB")
    print(f"    dagster raw+CSV+import:     cpu {run.cpu:6.2f} s  wall {run.wall:6.2f} s  peak "
          f"RSS {run.peak_rss_mb:7.1f} MB (CSV {csv_path.stat().st_size / 2**20:.0f} MiB, "
          f"record {record.stat().st_size / 2**20:.1f} MiB)")
    print(f"    peak over start-up: {run.peak_rss_mb - start.peak_rss_mb:.1f} MB "
          "(target <= 100 MB)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
