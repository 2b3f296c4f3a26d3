"""kill -9 during the fetch, the push and a file write, then run again: nothing half, nothing twice.

A child Python process runs the core for a day against the stand-in. The stand-in (subclassed
here) holds one chosen request open, so the child is known to be inside that request when it is
killed; the held request is then answered with a reset, so Pigment never processed it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.imports import push_day
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    IMPORT_KEY,
    STAND_IN_NOW,
    make_client,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
CHUNK_BYTES = 20_000
CHILD = """
import json, logging, sys
from datetime import date, datetime
from pathlib import Path
from pigment_audit_assets.core.client import PigmentClient, RequestPacer, RetryPolicy
from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.imports import push_day
from pigment_audit_assets.core.storage import LocalStorage

args = json.loads(sys.argv[1])
log = logging.getLogger("child")
client = PigmentClient(args["base_url"], audit_key=args["audit_key"],
                       import_key=args["import_key"], timeout_seconds=60,
                       retry=RetryPolicy(5, 0.01, 0.1), pacer=RequestPacer(10_000, 1.0), log=log)
storage = LocalStorage(args["root"])
day = date.fromisoformat(args["day"])
if args["mode"] == "fetch":
    fetch_days(client, [day], parse_zone("UTC"), storage,
               now=datetime.fromisoformat(args["now"]), log=log)
else:
    push_day(client, storage, day, args["configuration_id"], args["chunk_bytes"],
             poll_seconds=0.01, log=log)
print("done")
"""


class HoldingStandIn(PigmentStandIn):
    """A stand-in that can hold the n-th next request of an endpoint until released."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.holding = threading.Event()
        self._release = threading.Event()
        self._hold: tuple[str, int] | None = None
        self._hold_lock = threading.Lock()

    def hold(self, endpoint: str, after: int) -> None:
        """Let ``after`` more requests of ``endpoint`` through, then hold the next one."""
        with self._hold_lock:
            self._hold = (endpoint, after)

    def release(self) -> None:
        self._release.set()

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._hold_lock:
            held = False
            if self._hold is not None and self._hold[0] == endpoint:
                if self._hold[1] == 0:
                    self._hold, held = None, True
                else:
                    self._hold = (endpoint, self._hold[1] - 1)
        if held:
            self.holding.set()
            self._release.wait(timeout=60)
            return Fault("reset", endpoint)  # type: ignore[arg-type]  # never processed
        return super()._take_fault(endpoint)


@pytest.fixture
def holding() -> Iterator[HoldingStandIn]:
    server = HoldingStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                            configuration_ids=(CONFIGURATION_ID,), page_size=20,
                            now=STAND_IN_NOW)
    with server:
        yield server
        server.release()


def child(stand_in: PigmentStandIn, root: Path, mode: str) -> subprocess.Popen[bytes]:
    args = {"base_url": stand_in.base_url, "audit_key": AUDIT_KEY, "import_key": IMPORT_KEY,
            "root": str(root), "day": DAY.isoformat(), "mode": mode,
            "now": STAND_IN_NOW.isoformat(), "configuration_id": CONFIGURATION_ID,
            "chunk_bytes": CHUNK_BYTES}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when_held(stand_in: HoldingStandIn, process: subprocess.Popen[bytes]) -> None:
    """Wait (with a deadline) until the child sits in the held request, then kill -9 it."""
    if not stand_in.holding.wait(timeout=30):
        process.kill()
        raise AssertionError(f"the child never reached the held request: "
                             f"{process.communicate()[1].decode()[-2000:]}")
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    stand_in.release()


def raw_ids(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def trusted_files(root: Path) -> list[Path]:
    """The files a later step reads: everything but scratch work and temporary names."""
    return [path for path in root.rglob("*") if path.is_file()
            and "work" not in path.relative_to(root).parts and not path.name.endswith(".tmp")]


def assert_all_whole(root: Path) -> None:
    for path in trusted_files(root):
        if path.suffix == ".jsonl":
            for line in path.read_bytes().splitlines():
                orjson.loads(line)
        elif path.suffix == ".json":
            orjson.loads(path.read_bytes())


def test_kill_during_the_fetch_then_rerun(holding: HoldingStandIn, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    first = synthetic_events(DAY, 150, seed=31)
    holding.add_events(first)
    fetch_days(make_client(holding), [DAY], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    before = storage.raw_path(DAY).read_bytes()
    assert sorted(raw_ids(storage.raw_path(DAY))) == sorted(event["id"] for event in first)
    # Late events arrive; the next fetch is killed in the middle of its scan (page 5 of ~18).
    holding.add_events(synthetic_events(DAY, 200, seed=32, id_prefix="late-"))
    holding.reset_counters()
    holding.hold("audit", after=4)
    process = child(holding, tmp_path, "fetch")
    kill_when_held(holding, process)
    assert holding.request_counts["audit"] == 5
    assert storage.raw_path(DAY).read_bytes() == before  # the old file, whole
    assert_all_whole(tmp_path)
    # Run again: the day holds exactly the truth.
    process = child(holding, tmp_path, "fetch")
    assert process.wait(timeout=60) == 0, process.communicate()[1].decode()[-2000:]
    truth = sorted(event["id"] for event in holding.visible_events(event_day=DAY))
    ids = raw_ids(storage.raw_path(DAY))
    assert sorted(ids) == truth and len(truth) == 350
    assert_all_whole(tmp_path)


def prepared_csv(stand_in: PigmentStandIn, root: Path) -> tuple[LocalStorage, list[str]]:
    storage = LocalStorage(root)
    stand_in.add_events(synthetic_events(DAY, 300, seed=33))
    fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    return storage, raw_ids(storage.raw_path(DAY))


def test_kill_during_the_push_then_rerun(holding: HoldingStandIn, tmp_path: Path) -> None:
    storage, ids = prepared_csv(holding, tmp_path)
    holding.reset_counters()
    holding.hold("push", after=3)  # three chunks accepted, the fourth in flight
    process = child(holding, tmp_path, "push")
    kill_when_held(holding, process)
    assert len(holding.imports) == 3
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert [entry["importId"] for entry in record["imports"]] == [
        item.import_id for item in holding.imports]  # recorded as they were accepted
    assert_all_whole(tmp_path)
    accepted = {event_id for entry in record["imports"] for event_id in entry["eventIds"]}
    # Run again, in this process: only the rest is pushed, and the first three are followed.
    outcome = push_day(make_client(holding), storage, DAY, CONFIGURATION_ID, CHUNK_BYTES,
                       poll_seconds=0.01, log=log)
    assert outcome.already_pushed == len(accepted) > 0
    assert outcome.rows_pushed == len(ids) - len(accepted)
    pushed = Counter(row["id"] for row in holding.pushed_rows())
    assert pushed == Counter(ids)  # every row once, across both runs
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert {entry["status"] for entry in record["imports"]} == {"Completed"}
    assert len(record["imports"]) == len(holding.imports) > 4


def test_kill_while_following_the_imports_then_rerun(holding: HoldingStandIn,
                                                     tmp_path: Path) -> None:
    storage, ids = prepared_csv(holding, tmp_path)
    holding.reset_counters()
    holding.hold("status", after=1)
    process = child(holding, tmp_path, "push")
    kill_when_held(holding, process)
    pushes = holding.request_counts["push"]
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert len(record["imports"]) == pushes == len(holding.imports)
    outcome = push_day(make_client(holding), storage, DAY, CONFIGURATION_ID, CHUNK_BYTES,
                       poll_seconds=0.01, log=log)
    assert outcome.chunks == 0 and holding.request_counts["push"] == pushes
    assert sum(outcome.totals.values()) == len(ids)  # the open imports were followed
    assert Counter(row["id"] for row in holding.pushed_rows()) == Counter(ids)


WRITER = """
import sys
from pathlib import Path
from pigment_audit_assets.core.storage import atomic_write
with atomic_write(Path(sys.argv[1]), "wb") as handle:
    handle.write(b'{"id": "new-1"}\\n{"id": "ne')
    handle.flush()
    print("half written", flush=True)
    sys.stdin.readline()  # blocks until the parent kills us
"""


def test_kill_in_the_middle_of_a_file_write_leaves_the_old_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    path = storage.raw_path(DAY - timedelta(days=1))
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"id": "old-1"}\n')
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    # Synchronised on the child's word (an empty line if it died first).
    assert process.stdout.readline() == b"half written\n"
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert path.read_bytes() == b'{"id": "old-1"}\n'
    leftovers = [item for item in path.parent.iterdir() if item != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".")
    assert leftovers[0].name.endswith(".tmp")
    assert trusted_files(tmp_path) == [path]
