"""One day, one writer: the import step's lease, on a local folder and on S3.

A day whose lease another run holds is not pushed (the error names that run), an expired lease
is taken over, and two ``dagster asset materialize`` of one day at once, with no pool limit,
push every event exactly once with a record that says no more than Pigment accepted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from pigment_audit_assets.core import collect as collect_module
from pigment_audit_assets.core import table as table_module
from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.errors import DayLeaseHeldError, PigmentAuditError, StorageError
from pigment_audit_assets.core.imports import load_record, push_day, unsaved_journal
from pigment_audit_assets.core.lease import hold_lease
from pigment_audit_assets.core.storage import Storage, storage_from_url
from pigment_audit_assets.core.table import write_day_csv, write_stored_csv
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    IMPORT_KEY,
    make_client,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

log = logging.getLogger("pigment_audit_tests")


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return storage_from_url(str(tmp_path / "data"))
    return storage_from_url(request.getfixturevalue("s3_url"))


def _prepare_day(storage: Storage, count: int) -> list[str]:
    events = synthetic_events(DAY, count, seed=91)
    storage.write_bytes(storage.raw_key(DAY), b"".join(orjson.dumps(e) + b"\n" for e in events))
    write_stored_csv(storage, storage.raw_key(DAY), storage.csv_key(DAY))
    return [event["id"] for event in events]


def test_a_day_whose_lease_another_run_holds_is_not_pushed(stand_in: PigmentStandIn,
                                                           storage: Storage) -> None:
    _prepare_day(storage, 50)
    holder = {"owner": "Dagster run 1f2e3d4c", "host": "pod-a", "pid": 7, "token": "t",
              "expiresAt": time.time() + 600.0}
    assert storage.create(storage.lease_key(DAY), orjson.dumps(holder))
    with pytest.raises(DayLeaseHeldError, match=r"Dagster run 1f2e3d4c \(host pod-a, pid 7\) "
                                                r"holds .*leases/import-"):
        push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 1 << 20, log=log,
                 poll_seconds=0.01, lease_wait_seconds=0)
    assert stand_in.imports == [] and not storage.exists(storage.import_record_key(DAY))
    assert orjson.loads(storage.read_bytes(storage.lease_key(DAY)) or b"") == holder


def test_an_expired_lease_is_taken_over_and_given_back(stand_in: PigmentStandIn,
                                                      storage: Storage,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ids = _prepare_day(storage, 50)
    dead = {"owner": "Dagster run dead", "host": "pod-b", "pid": 9, "token": "t",
            "expiresAt": time.time() - 1.0}
    storage.write_bytes(storage.lease_key(DAY), orjson.dumps(dead))
    with caplog.at_level(logging.WARNING, logger=log.name):
        outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 1 << 20,
                           log=log, poll_seconds=0.01, lease_wait_seconds=0)
    assert outcome.rows_pushed == 50
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(ids)
    assert "expired, left by Dagster run dead (host pod-b, pid 9)" in caplog.text
    assert not storage.exists(storage.lease_key(DAY))


def test_a_lease_is_renewed_while_held_and_a_waiting_run_then_pushes_nothing_twice(
        stand_in: PigmentStandIn, storage: Storage) -> None:
    ids = _prepare_day(storage, 300)
    stand_in.push_gate.clear()  # the first push of the first run waits here
    results: dict[str, object] = {}

    def first() -> None:
        results["first"] = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID,
                                    20_000, log=log, poll_seconds=0.01, owner="first",
                                    lease_ttl_seconds=0.6)

    worker = threading.Thread(target=first)
    worker.start()
    deadline = time.monotonic() + 30
    while stand_in.push_arrivals == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the first push to arrive, with a deadline
    assert stand_in.push_arrivals == 1
    held = orjson.loads(storage.read_bytes(storage.lease_key(DAY)) or b"{}")
    # Held past several TTLs while the push waits: the lease is renewed, not stolen.
    while time.time() < held["expiresAt"] + 1.0:
        time.sleep(0.05)
    renewed = orjson.loads(storage.read_bytes(storage.lease_key(DAY)) or b"{}")
    assert renewed["owner"] == "first" and renewed["expiresAt"] > held["expiresAt"]
    with pytest.raises(DayLeaseHeldError, match="first"):
        push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 20_000, log=log,
                 poll_seconds=0.01, lease_wait_seconds=0.2)
    stand_in.push_gate.set()
    worker.join(timeout=60)
    second = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 20_000, log=log,
                      poll_seconds=0.01)
    assert second.rows_pushed == 0 and second.already_pushed == 300
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    assert sorted(pushed) == sorted(ids) and len(pushed) == len(set(pushed))


@pytest.mark.slow
def test_two_materializations_of_one_day_at_once_without_the_pool_limit(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    for day in (DAY, DAY + timedelta(days=1)):
        stand_in.add_events(synthetic_events(day, 2000, seed=day.toordinal()))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # no pool limit
    data = tmp_path / "data"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PIGMENT_BASE_URL": stand_in.base_url,
           "PIGMENT_AUDIT_API_KEY": AUDIT_KEY, "PIGMENT_IMPORT_API_KEY": IMPORT_KEY,
           "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
           "PIGMENT_AUDIT_STORAGE_URL": str(data),
           "PIGMENT_AUDIT_START_DATE": (DAY - timedelta(days=5)).isoformat()}
    config = '{"resources": {"pigment": {"config": {"chunk_size_mb": 0.05, ' \
             '"import_poll_seconds": 0.05}}}}'
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
               "-m", "pigment_audit_assets.definitions", "--select", "*",
               "--partition", DAY.isoformat(), "--config-json", config]
    # The instance's SQLite files exist before two processes open them at once.
    subprocess.run([str(Path(sys.executable).with_name("dagster")), "instance", "migrate"],
                   env=env, cwd=tmp_path, check=True, capture_output=True)
    stand_in.push_gate.clear()  # hold the first push until the second run is seen waiting
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    runs = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=handle,
                             stderr=subprocess.STDOUT)
            for handle in (open(path, "wb") for path in logs)]  # noqa: SIM115
    try:
        deadline = time.monotonic() + 240
        waiting = False
        while time.monotonic() < deadline and not waiting:
            # Waiting for the import lease: the raw one (scan, CSV) may be waited for first.
            waiting = any(re.search(rb"Waiting for Dagster run [^\n]*leases/import-",
                                    path.read_bytes()) for path in logs)
            if any(run.poll() is not None for run in runs):
                break
            time.sleep(0.1)  # polling the runs' logs, with a deadline
        assert waiting, "no run waited for the other's lease: " + logs[0].read_text()[-3000:]
        assert stand_in.push_arrivals == 1  # one run pushes, the other waits for its lease
        stand_in.push_gate.set()
        for run in runs:
            assert run.wait(timeout=240) == 0, [path.read_text()[-3000:] for path in logs]
    finally:
        stand_in.push_gate.set()
        for run in runs:
            run.kill()
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    truth = sorted(event["id"] for event in stand_in.visible_events(event_day=DAY))
    assert sorted(pushed) == truth and len(pushed) == len(set(pushed))  # each event once
    record = orjson.loads((data / "imports" / f"{DAY.isoformat()}.json").read_bytes())
    recorded = [event_id for entry in record["imports"] for event_id in entry["eventIds"]]
    assert sorted(recorded) == truth  # the record says exactly what Pigment accepted
    assert {entry["importId"] for entry in record["imports"]} == {
        imported.import_id for imported in stand_in.imports}
    raw = [orjson.loads(line)["id"] for line in
           (data / "raw" / f"{DAY.isoformat()}.jsonl").read_bytes().splitlines()]
    assert sorted(raw) == truth
    assert not (data / "leases" / f"import-{DAY.isoformat()}.json").exists()


@pytest.fixture
def full_imports_folder(tmp_path: Path) -> Iterator[Path]:
    """The storage's ``imports/`` folder on a tmpfs of one page: a real full disk (ENOSPC)."""
    folder = tmp_path / "data" / "imports"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs to mount a tiny tmpfs (root, as on CI) to fill a disk for real: "
                    + mounted.stderr.decode(errors="replace").strip())
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def test_a_full_disk_while_saving_the_record_loses_no_accepted_import(
        stand_in: PigmentStandIn, tmp_path: Path, full_imports_folder: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    storage = storage_from_url(str(tmp_path / "data"))
    ids = _prepare_day(storage, 600)
    with caplog.at_level(logging.INFO, logger=log.name), \
            pytest.raises(StorageError, match=r"accepted chunk 1/\d+ as import .* could not be "
                                              r"saved.*No space left.*kept in") as failure:
        push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 40_000, log=log,
                 poll_seconds=0.01)
    accepted = stand_in.imports[0].import_id
    assert len(stand_in.imports) == 1  # it stopped at once
    assert accepted in str(failure.value) and "PIGMENT_AUDIT_STORAGE_URL" in str(failure.value)
    assert f"accepted by Pigment as import {accepted}" in caplog.text  # logged before the save
    journal = unsaved_journal(storage, DAY)
    assert orjson.loads(journal.read_bytes().splitlines()[0])["importId"] == accepted
    subprocess.run(["umount", "-l", str(full_imports_folder)], check=True)  # space again
    outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 40_000, log=log,
                       poll_seconds=0.01)
    assert outcome.already_pushed == stand_in.imports[0].inserted_count
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    assert sorted(pushed) == sorted(ids) and len(pushed) == len(set(pushed))  # none twice
    record = orjson.loads(storage.read_bytes(storage.import_record_key(DAY)) or b"{}")
    assert record["imports"][0]["importId"] == accepted
    assert not journal.exists()  # absorbed into the record


@pytest.mark.parametrize("journal_text", [
    b'{"importId": "imp-1", "configurationId": "c", "chunk": 1, "pushedAt": '
    b'"2026-12-01T00:00:00+00:00", "eventIds": ["e1", "e',  # its last line cut
    b'{"importId": "imp-1", "chunk": 1}\n',  # JSON, but not an entry: no push time
    b'[1, 2]\n',  # not an object
])
def test_a_journal_cut_short_stops_the_push_naming_it(stand_in: PigmentStandIn, tmp_path: Path,
                                                      journal_text: bytes) -> None:
    """A journal of unsaved entries that cannot be read (its last line cut as the machine
    stopped, or edited): the push stops naming the journal, and pushes nothing."""
    storage = storage_from_url(str(tmp_path / "data"))
    _prepare_day(storage, 50)
    journal = unsaved_journal(storage, DAY)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(journal_text)
    with pytest.raises(PigmentAuditError, match=re.escape(str(journal)) + r" cannot be read"):
        push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 40_000, log=log,
                 poll_seconds=0.01)
    with pytest.raises(PigmentAuditError, match=re.escape(str(journal))):
        load_record(storage, DAY)  # the whole-record reader too
    assert stand_in.imports == []


def test_a_lease_left_by_a_killed_process_on_this_host_is_taken_at_once(
        stand_in: PigmentStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = storage_from_url(str(tmp_path / "data"))
    ids = _prepare_day(storage, 30)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    left = {"owner": "Dagster run killed", "host": socket.gethostname(), "pid": gone.pid,
            "token": "t", "expiresAt": time.time() + 600.0}
    storage.write_bytes(storage.lease_key(DAY), orjson.dumps(left))
    with caplog.at_level(logging.WARNING, logger=log.name):
        outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 1 << 20,
                           log=log, poll_seconds=0.01, lease_wait_seconds=0)
    assert outcome.rows_pushed == 30
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(ids)
    assert "no longer runs on this host" in caplog.text


def test_a_scan_does_not_rewrite_a_day_whose_raw_file_another_scan_is_writing(
        stand_in: PigmentStandIn, storage: Storage) -> None:
    stand_in.add_events(synthetic_events(DAY, 20, seed=14))
    storage.write_bytes(storage.raw_key(DAY), b"")
    holder = {"owner": "a scan in process 4242", "host": "pod-c", "pid": 4242, "token": "t",
              "expiresAt": time.time() + 600.0}
    assert storage.create(storage.raw_lease_key(DAY), orjson.dumps(holder))
    with pytest.raises(DayLeaseHeldError, match=r"a scan in process 4242 \(host pod-c"):
        fetch_days(make_client(stand_in), [DAY], timezone.utc, storage,
                   now=datetime.now(timezone.utc), log=log, lease_wait_seconds=0)
    assert storage.read_bytes(storage.raw_key(DAY)) == b""  # left to the scan that holds it
    storage.delete(storage.raw_lease_key(DAY))
    scan = fetch_days(make_client(stand_in), [DAY], timezone.utc, storage,
                      now=datetime.now(timezone.utc), log=log, lease_wait_seconds=0)
    assert scan.days[DAY].events == 20 and storage.list("leases/") == []


class _WaitWatch:
    """A log that sets ``waiting`` when a lease's holder is waited for."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.messages: list[str] = []

    def info(self, msg: str) -> None:
        self.messages.append(msg)
        if msg.startswith("Waiting for "):
            self.waiting.set()

    def warning(self, msg: str) -> None:
        self.messages.append(msg)


def test_the_csv_step_waits_for_a_scan_rewriting_the_raw_file(storage: Storage) -> None:
    """The CSV is written from the raw file a scan leaves, never from the one it replaces: the
    CSV step takes the day's raw lease, which the scan holds while it rewrites the file."""
    older = synthetic_events(DAY, 5, seed=92)
    newer = synthetic_events(DAY, 12, seed=93)
    lines = b"".join(orjson.dumps(event) + b"\n" for event in older)
    storage.write_bytes(storage.raw_key(DAY), lines)
    holder = {"owner": "a scan in process 4343", "host": "pod-d", "pid": 4343, "token": "t",
              "expiresAt": time.time() + 600.0}
    assert storage.create(storage.raw_lease_key(DAY), orjson.dumps(holder))
    with pytest.raises(DayLeaseHeldError, match=r"a scan in process 4343 \(host pod-d"):
        write_day_csv(storage, DAY, owner="a CSV step", log=log, wait_seconds=0)
    assert not storage.exists(storage.csv_key(DAY))  # nothing written from the older file
    storage.delete(storage.raw_lease_key(DAY))

    # A real scan's lease, and a CSV step started while the scan holds it.
    watch = _WaitWatch()
    with hold_lease(storage, storage.raw_lease_key(DAY), "a scan", log=log):
        summaries = []
        writer = threading.Thread(target=lambda: summaries.append(write_day_csv(
            storage, DAY, owner="a CSV step", log=watch, wait_seconds=60)))
        writer.start()
        assert watch.waiting.wait(30), watch.messages  # it waits for the lease...
        assert not storage.exists(storage.csv_key(DAY))  # ...having written nothing
        storage.write_bytes(storage.raw_key(DAY),
                            b"".join(orjson.dumps(event) + b"\n" for event in newer))
    writer.join(60)
    assert not writer.is_alive()
    (summary,) = summaries
    assert summary.rows == summary.raw_events == 12
    rows = csv.DictReader(io.StringIO(storage.read_bytes(storage.csv_key(DAY)).decode(),
                                      newline=""))
    assert sorted(row["id"] for row in rows) == sorted(event["id"] for event in newer)
    assert storage.list("leases/") == []  # both leases given back


@contextlib.contextmanager
def _lost_while_held(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """``hold_lease``, with the lease lost at once, as if taken over after it expired."""
    with hold_lease(*args, **kwargs) as lease:
        lease.lost = "The lease was taken over by another run; this one stops writing."
        yield lease


def test_a_csv_step_whose_lease_was_taken_over_commits_nothing(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw lease lost while the CSV was being written (it expired, a scan took it over and
    may be rewriting the raw file): the CSV step fails and the stored CSV stays as it was."""
    _prepare_day(storage, 8)
    stored = storage.read_bytes(storage.csv_key(DAY))
    storage.write_bytes(storage.raw_key(DAY), b"".join(
        orjson.dumps(event) + b"\n" for event in synthetic_events(DAY, 3, seed=94)))

    monkeypatch.setattr(table_module, "hold_lease", _lost_while_held)
    with pytest.raises(DayLeaseHeldError, match="taken over"):
        write_day_csv(storage, DAY, owner="a CSV step", log=log)
    assert storage.read_bytes(storage.csv_key(DAY)) == stored


def test_a_scan_whose_raw_lease_was_taken_over_leaves_the_raw_file_as_it_was(
        stand_in: PigmentStandIn, storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in.add_events(synthetic_events(DAY, 10, seed=95))
    storage.write_bytes(storage.raw_key(DAY), b"")

    monkeypatch.setattr(collect_module, "hold_lease", _lost_while_held)
    with pytest.raises(DayLeaseHeldError, match="taken over"):
        fetch_days(make_client(stand_in), [DAY], timezone.utc, storage,
                   now=datetime.now(timezone.utc), log=log, lease_wait_seconds=0)
    assert storage.read_bytes(storage.raw_key(DAY)) == b""
