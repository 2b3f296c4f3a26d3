"""The raw and CSV checks computed from what the steps saw while writing (issue 11).

The assets no longer read their files back to check them: these tests show that the figures
kept while writing say what the files hold (compared with an independent read of the files),
that the checks pass on them without opening the files, and that a disagreement sends the
check to the files, which names the problem.
"""

from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

import orjson

from pigment_audit_assets.core import jsonio
from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.days import epoch_microseconds, parse_timestamp, parse_zone
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import IdDigest, write_stored_csv
from pigment_audit_assets.defs import checks
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    DAY,
    IMPORT_KEY,
    STAND_IN_NOW,
    make_client,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

UTC = parse_zone("UTC")
log = logging.getLogger(__name__)


def odd_events() -> list[dict]:
    """Synthetic events, and ids that a CSV must quote, integer ids, an event too deep to
    have a compiled shape, and cells holding the writer's own separators."""
    events = synthetic_events(DAY, 40, seed=12)
    noon = datetime.combine(DAY, time(12), tzinfo=timezone.utc).isoformat()
    deep: dict = {"leaf": 1}
    for _ in range(300):
        deep = {"n": deep}
    events += [
        {"id": 'quoted, "id"', "eventTimestamp": noon, "eventType": "A"},
        {"id": "line\r\nfeed", "eventTimestamp": noon, "eventType": "A"},
        {"id": 123456789012345678901234567890, "eventTimestamp": noon, "eventType": "B"},
        {"id": "deep", "eventTimestamp": noon, "eventType": "C", "payload": deep},
        {"id": "separators", "eventTimestamp": noon, "eventType": "A",
         "note": "unit \x1f and record \x1e separators, a comma, too"},
    ]
    return events


def csv_ids(data: bytes) -> list[bytes]:
    """The id column of a CSV, read with Python's csv module: the independent read."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader)
    return [row[header.index("id")].encode() for row in reader]


def test_the_csv_figures_kept_while_writing_describe_the_written_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = odd_events()
    storage.write_bytes(storage.raw_key(DAY), b"".join(
        jsonio.dumps(event, any_depth=True) + b"\n" for event in events))
    summary = write_stored_csv(storage, storage.raw_key(DAY), storage.csv_key(DAY))
    written = csv_ids(storage.read_bytes(storage.csv_key(DAY)) or b"")
    independent = IdDigest()
    independent.update(written)
    raw = IdDigest()
    raw.update([str(event["id"]).encode() for event in events])
    assert summary.raw_events == summary.rows == len(events) == len(written)
    assert summary.csv_ids_digest == independent.hexdigest() == raw.hexdigest()
    assert summary.raw_ids_digest == raw.hexdigest()
    # The check passes on those figures alone: the files are not opened.
    storage.delete(storage.csv_key(DAY))
    storage.delete(storage.raw_key(DAY))
    result = checks.check_csv_written(storage, DAY, summary)
    assert result.passed and result.metadata["checked"].value == "while writing"
    assert result.metadata["csv_rows"].value == len(events)


def test_figures_that_disagree_send_the_csv_check_to_the_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = synthetic_events(DAY, 8, seed=3)
    storage.write_bytes(storage.raw_key(DAY), b"".join(orjson.dumps(e) + b"\n" for e in events))
    summary = write_stored_csv(storage, storage.raw_key(DAY), storage.csv_key(DAY))
    # Figures of a writer that got an id wrong, on files that are right: the read clears it.
    summary.csv_ids_digest = "0" * 64
    result = checks.check_csv_written(storage, DAY, summary)
    assert result.passed and "checked" not in result.metadata
    # On a CSV that really lost a row, the read names the id.
    text = (storage.read_bytes(storage.csv_key(DAY)) or b"").decode()
    lines = text.split("\r\n")
    kept = [line for line in lines if events[5]["id"] not in line]
    storage.write_bytes(storage.csv_key(DAY), "\r\n".join(kept).encode())
    summary.rows -= 1
    result = checks.check_csv_written(storage, DAY, summary)
    assert not result.passed
    assert result.metadata["ids_missing_from_csv"].value == [events[5]["id"]]


def test_the_raw_figures_kept_while_writing_pass_without_reading(tmp_path: Path) -> None:
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY, page_size=25,
                        now=STAND_IN_NOW) as stand_in:
        stand_in.add_events(synthetic_events(DAY, 90, seed=5))
        stand_in.add_events(synthetic_events(DAY + timedelta(days=1), 30, seed=6))
        storage = LocalStorage(tmp_path)
        scan = fetch_days(make_client(stand_in), [DAY], UTC, storage,
                          now=STAND_IN_NOW, log=log)
    day_file = scan.days[DAY]
    lines = (storage.read_bytes(storage.raw_key(DAY)) or b"").splitlines()
    assert day_file.lines_written == day_file.events == len(lines) == 90
    times = [epoch_microseconds(parse_timestamp(orjson.loads(line)["eventTimestamp"]))
             for line in lines]
    assert (day_file.first_at, day_file.last_at) == (min(times), max(times))
    assert checks.check_raw_file(storage, DAY, UTC).passed  # the independent read agrees
    storage.delete(storage.raw_key(DAY))
    result = checks.check_raw_written(storage, day_file, UTC)
    assert result.passed and result.metadata["checked"].value == "while writing"
    assert result.metadata["events_checked"].value == 90


def test_a_kept_event_of_another_day_is_named_by_the_raw_check(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    stranger = synthetic_events(DAY - timedelta(days=1), 1, seed=8)[0]
    storage.write_bytes(storage.raw_key(DAY), orjson.dumps(stranger) + b"\n")
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY, now=STAND_IN_NOW) as stand_in:
        stand_in.add_events(synthetic_events(DAY, 20, seed=9))
        scan = fetch_days(make_client(stand_in), [DAY], UTC, storage,
                          now=STAND_IN_NOW, log=log)
    day_file = scan.days[DAY]
    assert day_file.misplaced == [(stranger["id"], (DAY - timedelta(days=1)).isoformat())]
    result = checks.check_raw_written(storage, day_file, UTC)
    assert not result.passed
    assert f"event of {DAY - timedelta(days=1)}" in result.metadata["first_problems"].value
    # Figures out of the day's window alone (a writer that filed an event badly) fail too.
    day_file.misplaced.clear()
    storage.write_bytes(storage.raw_key(DAY), orjson.dumps(stranger) + b"\n")
    assert not checks.check_raw_written(storage, day_file, UTC).passed


def test_loading_the_project_does_not_import_pandas() -> None:
    """pandas was imported for the CSV preview alone: 0.5 s of every Dagster process's
    start-up (benchmarks/bench_dagster.py). The preview is read with the csv module."""
    code = ("import sys, pigment_audit_assets.definitions, pigment_audit_assets.defs.metadata; "
            "sys.exit('pandas' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
