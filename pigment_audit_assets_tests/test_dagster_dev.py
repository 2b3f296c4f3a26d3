"""End to end as the UI does it: ``dagster dev`` on the project, a two-day backfill over GraphQL.

The webserver and the daemon run as a real ``dagster dev`` subprocess (its own process group,
always killed at the end) with a fresh DAGSTER_HOME holding the repository's ``dagster.yaml``,
pointed at an in-process Pigment stand-in. The backfill goes through the backfill daemon, the
run queue and the Pigment pool exactly as a click in the UI would.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pigment_audit_assets_tests.conftest import AUDIT_KEY, CONFIGURATION_ID, IMPORT_KEY, TODAY
from pigment_audit_assets_tests.schedule_support import (
    NODES,
    UTC,
    raw_ids,
    scan_floor,
    truth_ids,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parent.parent
DAYS = [TODAY - timedelta(days=4), TODAY - timedelta(days=3)]
READY_SECONDS = 120.0
BACKFILL_SECONDS = 240.0
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""
BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status error { message } }
    ... on PythonError { message }
  }
}
"""
BACKFILL_RUNS = """
query Runs($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DagsterDev:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(self.url + "/graphql", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            payload = json.loads(answer.read())
        assert "errors" not in payload, payload
        return payload["data"]


def wait_until_ready(dev: DagsterDev) -> None:
    """Poll /server_info until it answers (bounded), failing early if dagster dev exits."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            pytest.fail(f"dagster dev exited with {dev.process.returncode}:\n{dev.log_tail()}")
        try:
            with urllib.request.urlopen(dev.url + "/server_info", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling interval while the webserver starts
    pytest.fail(f"dagster dev did not answer within {READY_SECONDS:.0f} s:\n{dev.log_tail()}")


def launch_backfill(dev: DagsterDev, partitions: list[str]) -> str:
    """Launch the backfill; retried while the code location is still loading (bounded)."""
    params = {"assetSelection": [{"path": [node]} for node in NODES],
              "partitionNames": partitions, "title": "two days from the test"}
    deadline = time.monotonic() + READY_SECONDS
    while True:
        answer = dev.graphql(LAUNCH, {"params": params})["launchPartitionBackfill"]
        if answer["__typename"] == "LaunchBackfillSuccess":
            return str(answer["backfillId"])
        if time.monotonic() > deadline:
            pytest.fail(f"could not launch the backfill: {answer}\n{dev.log_tail()}")
        time.sleep(1)  # polling interval while the code location loads


def wait_for_backfills(dev: DagsterDev, backfill_ids: list[str], *,
                       seconds: float = BACKFILL_SECONDS,
                       log_tail: Callable[[], str] | None = None) -> list[str]:
    """Poll until every backfill has finished (bounded); their final statuses. On time-out
    the failure shows ``log_tail()`` (by default the webserver's log)."""
    deadline = time.monotonic() + seconds
    statuses = ["unknown"] * len(backfill_ids)
    while time.monotonic() < deadline:
        for index, backfill_id in enumerate(backfill_ids):
            answer = dev.graphql(BACKFILL_STATUS,
                                 {"id": backfill_id})["partitionBackfillOrError"]
            assert answer["__typename"] == "PartitionBackfill", answer
            statuses[index] = answer["status"]
        if all(status in FINISHED for status in statuses):
            return statuses
        time.sleep(1)  # polling interval while the daemon works
    pytest.fail(f"backfills {backfill_ids} still {statuses} after {seconds:.0f} s:\n"
                f"{(log_tail or dev.log_tail)()}")


@pytest.fixture
def pigment() -> Iterator[PigmentStandIn]:
    """A stand-in whose clock is two days after the backfill, with late events."""
    now = datetime.combine(TODAY - timedelta(days=1), dtime(12), tzinfo=UTC)
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100,
                        now=now) as server:
        for day in [DAYS[0] - timedelta(days=1), *DAYS, DAYS[-1] + timedelta(days=1)]:
            server.add_events(synthetic_events(day, 180, seed=day.toordinal(),
                                               late_fraction=0.05))
        yield server


@pytest.fixture
def dagster_dev(pigment: PigmentStandIn, tmp_path: Path) -> Iterator[DagsterDev]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPOSITORY / "dagster.yaml", home / "dagster.yaml")
    off_hour = (datetime.now(UTC).hour + 12) % 24  # the daily schedule stays out of the way
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PIGMENT_AUDIT_API_KEY": AUDIT_KEY,
        "PIGMENT_IMPORT_API_KEY": IMPORT_KEY,
        "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
        "PIGMENT_BASE_URL": pigment.base_url,
        "PIGMENT_AUDIT_STORAGE_URL": str(tmp_path / "data"),
        "PIGMENT_AUDIT_START_DATE": (TODAY - timedelta(days=30)).isoformat(),
        "PIGMENT_AUDIT_TIMEZONE": "UTC",
        "PIGMENT_AUDIT_SCHEDULE_HOUR": str(off_hour),
    }
    port = free_port()
    log_path = tmp_path / "dagster_dev.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPOSITORY, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    dev = DagsterDev(f"http://127.0.0.1:{port}", process, log_path)
    try:
        yield dev
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop dagster dev and everything it started (its process group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    # Children left behind (code server, daemon, run workers), if any.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_two_day_backfill_launched_over_graphql(pigment: PigmentStandIn,
                                                dagster_dev: DagsterDev,
                                                tmp_path: Path) -> None:
    wait_until_ready(dagster_dev)
    keys = [day.isoformat() for day in DAYS]
    backfill_id = launch_backfill(dagster_dev, keys)
    (status,) = wait_for_backfills(dagster_dev, [backfill_id])
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"}, dagster_dev.log_tail()

    # The single-run policy: one run for both days, over the range.
    runs = dagster_dev.graphql(BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS", runs
    tags = {tag["key"]: tag["value"] for tag in runs[0]["tags"]}
    assert (tags["dagster/asset_partition_range_start"],
            tags["dagster/asset_partition_range_end"]) == (keys[0], keys[-1])
    # One scan from the first day.
    assert pigment.request_counts["audit"] == scan_floor(pigment, DAYS[0])

    data = tmp_path / "data"
    pushed = Counter(row["id"] for row in pigment.pushed_rows())
    expected: list[str] = []
    for day in DAYS:
        truth = truth_ids(pigment, day)
        assert truth and sorted(raw_ids(data, day)) == truth, day
        with open(data / "csv" / f"{day}.csv", newline="", encoding="utf-8") as handle:
            assert [row["id"] for row in csv.DictReader(handle)] == raw_ids(data, day)
        record = orjson.loads((data / "imports" / f"{day}.json").read_bytes())
        assert sorted(event_id for entry in record["imports"]
                      for event_id in entry["eventIds"]) == truth
        assert {entry["status"] for entry in record["imports"]} == {"Completed"}
        expected += truth
    assert max(pushed.values()) == 1 and sorted(pushed) == sorted(expected)
    for neighbour in (DAYS[0] - timedelta(days=1), DAYS[-1] + timedelta(days=1)):
        assert not (data / "raw" / f"{neighbour}.jsonl").exists()
