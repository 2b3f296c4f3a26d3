"""CPU, wall time and peak memory: ``pigment-audit`` against the community script.

Everything runs against the project's Pigment stand-in on loopback, started as its own process
(``benchmarks/stand_in_server.py``), so its work is not counted. Each measured program runs as
a child process; its CPU (user + system) and peak RSS come from ``os.wait4``'s resource usage
of that child alone, its wall time from a monotonic clock around it.

1. One day of ``--events`` events (default 100,000), API -> CSV: the community script
   (``../shared/reference/pigment_audit_tool.py``, with ``PIGMENT_BASE_URL``) and
   ``pigment-audit`` alternately, ``--runs`` times each; the CSVs are checked to hold the same
   rows. Pages are served oldest-first, as the script assumes, and the stand-in serves exactly
   that day's events (none ingested late, none of other days), so both read the same events.
2. Peak RSS of ``pigment-audit`` for a day of ``--big-events`` events (default 1,000,000).
3. Peak RSS of pushing that day's CSV in ``--chunk-size`` MiB chunks (``push_csv.py``).

``--quick`` shrinks everything (20,000 / 200,000 events, 2 runs, 10 MiB chunks) to check the
benchmark itself in about a minute. Not part of the test suite; nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMUNITY_SCRIPT = HERE.parents[1] / "shared" / "reference" / "pigment_audit_tool.py"
PYTHON = sys.executable
COMMAND = Path(PYTHON).with_name("pigment-audit")
CONFIGURATION_ID = "00000000-0000-4000-8000-000000000001"
AUDIT_KEY, IMPORT_KEY = "bench-audit-key", "bench-import-key"
CHILD_TIMEOUT = 900.0  # seconds: a stuck child fails the benchmark instead of hanging it


@dataclass
class Run:
    """What one child process cost."""

    cpu: float  # user + system seconds
    wall: float
    peak_rss_mb: float


def measure(argv: list[str], env: dict[str, str], log: Path) -> Run:
    """Run ``argv`` to completion; its own CPU and peak RSS (os.wait4), and its wall time.

    ``rusage.py`` forks the command and reads its usage, so that this process's size does
    not leak into the command's peak RSS.
    """
    result = log.with_suffix(".rusage.json")
    with open(log, "wb") as output:
        process = subprocess.Popen([PYTHON, str(HERE / "rusage.py"), str(result), "--", *argv],
                                   env=env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=log.parent,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the command too, not just rusage.py
            process.wait()
            raise RuntimeError(f"{argv[:2]} timed out; see {log}") from None
    if returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {returncode}:\n{log.read_text()[-3000:]}")
    return Run(**json.loads(result.read_text()))


class StandIn:
    """The stand-in server as a child process, serving one synthetic day."""

    def __init__(self, day: str, events: int, scratch: Path, page_size: int = 1000) -> None:
        self.log = scratch / f"stand-in-{events}.log"
        self._log_handle = open(self.log, "wb")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(
            [PYTHON, str(HERE / "stand_in_server.py"), "--day", day, "--events", str(events),
             "--order", "oldest", "--page-size", str(page_size), "--audit-key", AUDIT_KEY,
             "--import-key", IMPORT_KEY, "--configuration-id", CONFIGURATION_ID],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_handle, cwd=ROOT)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().split()  # blocks while events are built
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"the stand-in did not start; see {self.log}")
        self.base_url = line[1]

    def stop(self) -> None:
        """Close its stdin (its stop signal) and wait for it."""
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_handle.close()


def child_env(base_url: str) -> dict[str, str]:
    """The environment both programs read their settings from."""
    env = dict(os.environ, PIGMENT_BASE_URL=base_url, PIGMENT_AUDIT_API_KEY=AUDIT_KEY,
               PIGMENT_IMPORT_API_KEY=IMPORT_KEY, PIGMENT_AUDIT_TIMEZONE="UTC",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def community(day: str, output: Path) -> list[str]:
    """The community script's command line for one day."""
    return [PYTHON, str(COMMUNITY_SCRIPT), "--start-date", day, "--end-date", day,
            "--output-file", str(output)]


def ours(day: str, output: Path) -> list[str]:
    """``pigment-audit``'s command line for one day."""
    return [str(COMMAND), "--start-date", day, "--end-date", day, "--output-file", str(output)]


def rows_by_id(path: Path) -> tuple[set[str], dict[str, dict[str, str]]]:
    """A CSV's columns and its rows keyed by event id (the two programs order rows differently:
    the script by ingestion, ours by event time)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = {row["id"]: row for row in reader}
        return set(reader.fieldnames or ()), rows


def summary(runs: list[Run]) -> tuple[float, float, float]:
    """Median CPU, median wall, max peak RSS."""
    return (statistics.median(run.cpu for run in runs),
            statistics.median(run.wall for run in runs),
            max(run.peak_rss_mb for run in runs))


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the benchmark")
    parser.add_argument("--events", type=int, help="events of the compared day (100,000)")
    parser.add_argument("--runs", type=int, help="runs of each program (5)")
    parser.add_argument("--big-events", type=int, help="events of the memory day (1,000,000)")
    parser.add_argument("--chunk-size", type=float, help="push chunk size in MiB (50)")
    parser.add_argument("--skip-big", action="store_true", help="only the CPU comparison")
    parser.add_argument("--keep", type=Path, help="keep the work files in this folder")
    args = parser.parse_args(argv)
    events = args.events or (20_000 if args.quick else 100_000)
    runs = args.runs or (2 if args.quick else 5)
    big_events = args.big_events or (200_000 if args.quick else 1_000_000)
    chunk_mb = args.chunk_size or (10.0 if args.quick else 50.0)
    if not COMMUNITY_SCRIPT.exists():
        print(f"The community script is not at {COMMUNITY_SCRIPT}.", file=sys.stderr)
        return 1
    # A day well inside the Audit API's 180-day lookback and entirely in the past.
    day = (datetime.now(timezone.utc) - timedelta(days=3)).date().isoformat()
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; day {day}")

    scratch = Path(tempfile.mkdtemp(prefix="pigment-bench-"))
    try:
        # --- 1. CPU: the script against pigment-audit on the same day ----------------------
        print(f"\n[1] one day of {events:,} events, API -> CSV, {runs} runs each "
              "(stand-in starting...)", flush=True)
        server = StandIn(day, events, scratch)
        try:
            env = child_env(server.base_url)
            results: dict[str, list[Run]] = {"community script": [], "pigment-audit": []}
            for attempt in range(runs):
                for name, build in (("community script", community), ("pigment-audit", ours)):
                    output = scratch / f"{name.split()[0]}-{attempt}.csv"
                    run = measure(build(day, output), env, scratch / f"{name.split()[0]}.log")
                    results[name].append(run)
                    print(f"    {name:17} run {attempt + 1}: cpu {run.cpu:6.2f} s  wall "
                          f"{run.wall:6.2f} s  peak RSS {run.peak_rss_mb:7.1f} MB", flush=True)
            theirs_columns, theirs_rows = rows_by_id(scratch / "community-0.csv")
            our_columns, our_rows = rows_by_id(scratch / "pigment-audit-0.csv")
            same = theirs_columns == our_columns and theirs_rows == our_rows
            print(f"    CSVs: {len(theirs_rows):,} vs {len(our_rows):,} rows, "
                  f"{len(theirs_columns)} vs {len(our_columns)} columns, same cells: {same}")
            for attempt in range(runs):
                for name in ("community", "pigment-audit"):
                    (scratch / f"{name}-{attempt}.csv").unlink()
        finally:
            server.stop()
        script_cpu, script_wall, script_rss = summary(results["community script"])
        our_cpu, our_wall, our_rss = summary(results["pigment-audit"])
        print(f"\n    {'median of ' + str(runs):20} {'CPU s':>8} {'wall s':>8} {'peak MB':>8}")
        print(f"    {'community script':20} {script_cpu:8.2f} {script_wall:8.2f} {script_rss:8.1f}")
        print(f"    {'pigment-audit':20} {our_cpu:8.2f} {our_wall:8.2f} {our_rss:8.1f}")
        print(f"    {'script / ours':20} {script_cpu / our_cpu:7.1f}x "
              f"{script_wall / our_wall:7.1f}x {script_rss / our_rss:7.1f}x")
        if not same:
            print("    WARNING: the two CSVs differ", flush=True)
        if args.skip_big:
            return 0

        # --- 2. memory: a big day, fetch + CSV ---------------------------------------------
        print(f"\n[2] one day of {big_events:,} events, 2,000 a page, pigment-audit fetch + "
              "CSV (stand-in starting...)", flush=True)
        big_csv = scratch / "big.csv"
        # 2,000 events a page (Pigment sends 1,000): 1M events in 500 requests, which is what
        # the client's pacer allows in 5 minutes (Pigment's limit); with 1,000 a page the scan
        # would sit out a 5-minute window. Bigger pages only make the memory test harder.
        server = StandIn(day, big_events, scratch, page_size=2000)
        try:
            env = child_env(server.base_url)
            big = measure(ours(day, big_csv), env, scratch / "big.log")
            print(f"    pigment-audit: cpu {big.cpu:.2f} s  wall {big.wall:.2f} s  peak RSS "
                  f"{big.peak_rss_mb:.1f} MB  (CSV {big_csv.stat().st_size / 2**20:.0f} MiB)",
                  flush=True)

            # --- 3. memory: pushing that CSV in chunks -------------------------------------
            print(f"\n[3] push the {big_csv.stat().st_size / 2**20:.0f} MiB CSV in "
                  f"{chunk_mb:g} MiB chunks", flush=True)
            push = measure([PYTHON, str(HERE / "push_csv.py"), str(big_csv), "--chunk-size",
                            str(chunk_mb), "--import-config", CONFIGURATION_ID],
                           env, scratch / "push.log")
            print(f"    {(scratch / 'push.log').read_text().strip()}")
            print(f"    push: cpu {push.cpu:.2f} s  wall {push.wall:.2f} s  peak RSS "
                  f"{push.peak_rss_mb:.1f} MB (chunk {chunk_mb:g} MiB)", flush=True)
        finally:
            server.stop()
    finally:
        if args.keep:
            shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
