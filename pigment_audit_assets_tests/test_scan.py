"""The client and the scan against the stand-in: exact days whatever the page order."""

from __future__ import annotations

import gc
import logging
import random
import tempfile
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from pigment_audit_assets.core import collect, jsonio
from pigment_audit_assets.core import table as table_module
from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.errors import LookbackError, PigmentApiError
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import CsvTable, write_csv
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    DAY,
    IMPORT_KEY,
    STAND_IN_NOW,
    days_before,
    make_client,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_json_edges import nested

log = logging.getLogger(__name__)


def load_ids(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def fill(stand_in: PigmentStandIn, days: list[date], count: int, tz: str = "UTC") -> None:
    for day in days:
        stand_in.add_events(synthetic_events(day, count, tz=tz, seed=day.toordinal()))


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_each_day_holds_exactly_its_events(order: str, tmp_path: Path) -> None:
    neighbours = days_before(DAY + timedelta(days=1), 4)  # DAY-2 .. DAY+1
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY, page_size=50, order=order,
                        now=STAND_IN_NOW) as stand_in:
        fill(stand_in, neighbours, 120)
        storage = LocalStorage(tmp_path)
        wanted = [DAY - timedelta(days=1), DAY]
        scan = fetch_days(make_client(stand_in), wanted, parse_zone("UTC"), storage,
                          now=STAND_IN_NOW, log=log)
        for day in wanted:
            truth = sorted(event["id"] for event in stand_in.visible_events(event_day=day))
            ids = load_ids(storage.raw_path(day))
            assert sorted(ids) == truth and len(ids) == 120
            assert scan.days[day].events == 120
        # The day after (and the day before's late stragglers) were seen, not written.
        assert scan.outside_range == scan.events_seen - 240 >= 120
        assert not storage.raw_path(DAY + timedelta(days=1)).exists()
        # One scan: exactly the pages holding the events ingested since the first day.
        ingested = sum(1 for event in stand_in.visible_events()
                       if event["ingestionTimestamp"] >= (DAY - timedelta(days=1)).isoformat())
        assert stand_in.request_counts["audit"] == scan.pages == -(-ingested // 50)


def test_days_follow_the_configured_zone(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    tz = "Asia/Kolkata"
    fill(stand_in, days_before(DAY + timedelta(days=1), 3), 80, tz=tz)
    storage = LocalStorage(tmp_path)
    fetch_days(make_client(stand_in), [DAY], parse_zone(tz), storage, now=STAND_IN_NOW,
               log=log)
    truth = sorted(event["id"] for event in stand_in.visible_events(event_day=DAY, tz=tz))
    assert sorted(load_ids(storage.raw_path(DAY))) == truth


def test_duplicates_across_pages_are_written_once(stand_in: PigmentStandIn,
                                                  tmp_path: Path) -> None:
    events = synthetic_events(DAY, 250, seed=1)
    stand_in.add_events(events)
    stand_in.add_events(events[:120])  # served twice, on other pages
    storage = LocalStorage(tmp_path)
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                      now=STAND_IN_NOW, log=log)
    ids = load_ids(storage.raw_path(DAY))
    assert len(ids) == len(set(ids)) == 250
    assert scan.duplicates == 120
    # Sorted by event time, then id: a re-run writes the same bytes.
    first = storage.raw_path(DAY).read_bytes()
    times = [orjson.loads(line)["eventTimestamp"] for line in first.splitlines()]
    assert times == sorted(times)
    fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    assert storage.raw_path(DAY).read_bytes() == first


def test_raw_lines_are_the_api_events_unchanged(stand_in: PigmentStandIn,
                                                tmp_path: Path) -> None:
    events = synthetic_events(DAY, 60, seed=4)
    stand_in.add_events(events)
    storage = LocalStorage(tmp_path)
    fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    stored = {event["id"]: event
              for event in map(orjson.loads, storage.raw_path(DAY).read_bytes().splitlines())}
    assert stored == {event["id"]: event for event in events}


def test_an_empty_day_gives_an_empty_file(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    fill(stand_in, [DAY - timedelta(days=1), DAY + timedelta(days=1)], 30)
    storage = LocalStorage(tmp_path)
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                      now=STAND_IN_NOW, log=log)
    assert storage.raw_path(DAY).read_bytes() == b""
    assert scan.days[DAY].events == 0


def test_a_cursor_on_the_last_page_still_ends_the_scan(tmp_path: Path) -> None:
    with PigmentStandIn(audit_key=AUDIT_KEY, page_size=40, cursor_on_last_page=True,
                        now=STAND_IN_NOW) as stand_in:
        fill(stand_in, [DAY], 100)
        storage = LocalStorage(tmp_path)
        fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                   now=STAND_IN_NOW, log=log)
        assert len(load_ids(storage.raw_path(DAY))) == 100


def test_events_stored_earlier_are_kept(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    earlier = synthetic_events(DAY, 5, seed=77, id_prefix="old-")
    storage.raw_path(DAY).parent.mkdir(parents=True)
    storage.raw_path(DAY).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in earlier))
    fill(stand_in, [DAY], 40)
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                      now=STAND_IN_NOW, log=log)
    ids = set(load_ids(storage.raw_path(DAY)))
    assert {event["id"] for event in earlier} <= ids and len(ids) == 45
    assert (scan.days[DAY].kept_from_before, scan.days[DAY].added) == (5, 40)


def test_lookback_guard_fails_before_any_request(stand_in: PigmentStandIn,
                                                 tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    old_day = (datetime.now(timezone.utc) - timedelta(days=200)).date()
    storage.raw_path(old_day).parent.mkdir(parents=True)
    storage.raw_path(old_day).write_bytes(b'{"id": "kept"}\n')
    with pytest.raises(LookbackError, match="180 days"):
        fetch_days(make_client(stand_in), [old_day], parse_zone("UTC"), storage,
                   now=datetime.now(timezone.utc), log=log)
    assert stand_in.request_counts["audit"] == 0
    assert storage.raw_path(old_day).read_bytes() == b'{"id": "kept"}\n'


def test_wrong_key_fails_at_once_naming_the_variable(stand_in: PigmentStandIn,
                                                     tmp_path: Path) -> None:
    client = make_client(stand_in, audit_key="not-the-key-123")
    with pytest.raises(PigmentApiError, match=r"PIGMENT_AUDIT_API_KEY.*Security Admin") as error:
        fetch_days(client, [DAY], parse_zone("UTC"), LocalStorage(tmp_path), now=STAND_IN_NOW,
                   log=log)
    assert "not-the-key-123" not in str(error.value) and "not-the-key-123" not in repr(client)
    assert stand_in.request_counts["audit"] == 1


@pytest.fixture(params=[None, 4096], ids=["in memory", "spilled to SQLite"])
def spool_budget(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's spool in memory, or moved to SQLite after a few events."""
    if request.param is not None:
        monkeypatch.setattr(collect, "MEMORY_BUDGET", request.param)


def serve_two_days(stand_in: PigmentStandIn, count: int, seed: int
                   ) -> tuple[list[date], list[dict[str, Any]]]:
    """150 events on each of two days, and ``count`` more of the second, half served twice:
    the days, and those ``count`` events."""
    days = [DAY - timedelta(days=1), DAY]
    fill(stand_in, days, 150)
    events = synthetic_events(DAY, count, seed=seed)
    stand_in.add_events(events)
    stand_in.add_events(events[:count // 2])  # served twice
    return days, events


@pytest.mark.usefixtures("spool_budget")
def test_a_table_filled_during_the_scan_gives_the_csv_of_the_raw_files(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The command line's CSV (rendered while scanning) is the CSV of the day files."""
    days, _ = serve_two_days(stand_in, 60, seed=5)
    ingested = f"{DAY.isoformat()}T12:00:00.000Z"
    odd = [  # a collision, an object where others have text, and one too wide to compile
        {"id": "odd-1", "eventTimestamp": f"{DAY}T01:00:00Z", "ingestionTimestamp": ingested,
         "a_b": 1, "a": {"b": 2}},
        {"id": "odd-2", "eventTimestamp": f"{DAY}T01:00:00Z", "ingestionTimestamp": ingested,
         "a_b": {"c": "x, y"}, "a": {"b": 2}},
        {"id": "odd-3", "eventTimestamp": f"{DAY}T02:00:00Z", "ingestionTimestamp": ingested,
         **{f"f{number}": number for number in range(1500)}},
    ]
    stand_in.add_events(odd)
    storage = LocalStorage(tmp_path / "store")
    earlier = synthetic_events(DAY, 5, seed=77, id_prefix="old-")  # kept from a previous scan
    storage.raw_path(DAY).parent.mkdir(parents=True)
    storage.raw_path(DAY).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in earlier))
    with CsvTable(tmp_path / "scratch") as table:
        scan = fetch_days(make_client(stand_in), days, parse_zone("UTC"), storage,
                          now=STAND_IN_NOW, log=log, table=table)
        fused = table.write(tmp_path / "fused.csv")
    plain = write_csv([storage.raw_path(day) for day in days], tmp_path / "plain.csv")
    assert fused.rows == plain.rows == sum(day.events for day in scan.days.values()) == 368
    assert (tmp_path / "fused.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert fused.collisions == plain.collisions == 1


@pytest.mark.usefixtures("spool_budget")
def test_a_scan_without_raw_files_gives_the_rows_and_rejects_of_one_with_them(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The command line's scan (``raw_files=False``) writes the CSV, the rejects and the
    counts of a scan that writes raw files, and no raw file."""
    days, events = serve_two_days(stand_in, 40, seed=6)
    ingested = f"{DAY.isoformat()}T12:00:00.000Z"
    odd = [  # unshaped (too wide to compile), too deep for a raw file, a big integer, no id,
        # and text with half an emoji (a lone surrogate), in a compiled shape and unshaped
        {"id": "wide", "eventTimestamp": f"{DAY}T02:00:00Z", "ingestionTimestamp": ingested,
         **{f"f{number}": number for number in range(1500)}},
        {**events[3], "id": "deep", "payload": nested(300, "bottom")},
        {**events[4], "id": "big", "payload": {"count": 123456789012345678901234567890}},
        {"eventTimestamp": f"{DAY}T03:00:00Z", "ingestionTimestamp": ingested},
        {**events[5], "id": "half-emoji", "eventType": "Renamed \ud83d"},
        {"id": "wide-half-emoji", "eventTimestamp": f"{DAY}T04:00:00Z",
         "ingestionTimestamp": ingested, "name": "\ud83d",
         **{f"f{number}": number for number in range(1500)}},
    ]
    stand_in.add_events(odd)
    scans = {}
    for name, raw_files in (("with", True), ("without", False)):
        storage = LocalStorage(tmp_path / name)
        with CsvTable(tmp_path / f"scratch-{name}") as table:
            scan = fetch_days(make_client(stand_in), days, parse_zone("UTC"), storage,
                              now=STAND_IN_NOW, log=log, table=table, raw_files=raw_files)
            table.write(tmp_path / f"{name}.csv")
        scans[name] = (storage, scan)
    (with_raw, scan), (without_raw, rows_only) = scans["with"], scans["without"]
    assert (tmp_path / "without.csv").read_bytes() == (tmp_path / "with.csv").read_bytes()
    assert b"123456789012345678901234567890" in (tmp_path / "without.csv").read_bytes()
    for day in days:
        assert not without_raw.raw_path(day).exists()
        assert with_raw.raw_path(day).exists()
        ours, theirs = rows_only.days[day], scan.days[day]
        assert (ours.events, ours.event_types, ours.first_event_at, ours.last_event_at,
                ours.rejected) == (theirs.events, theirs.event_types, theirs.first_event_at,
                                   theirs.last_event_at, theirs.rejected)
    assert scan.days[DAY].events == 150 + 40 + 2 and scan.days[DAY].rejected == 4
    assert (without_raw.rejected_path(DAY).read_bytes()
            == with_raw.rejected_path(DAY).read_bytes())
    reasons = {jsonio.loads(line)["reason"]  # json's reading: a line holds \ud83d
               for line in without_raw.rejected_path(DAY).read_bytes().splitlines()}
    assert reasons == {"nested deeper than 254 levels", "no id", jsonio.NOT_UNICODE}
    assert (rows_only.duplicates, rows_only.rejected) == (scan.duplicates, scan.rejected) == (20, 4)


def test_a_scan_without_raw_files_needs_a_table(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="raw_files=False needs a table"):
        fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), LocalStorage(tmp_path),
                   now=STAND_IN_NOW, log=log, raw_files=False)
    assert sum(stand_in.request_counts.values()) == 0  # refused before any request


@pytest.mark.parametrize("seed", range(4))
def test_the_in_memory_spool_counts_a_day_as_sqlite_does(tmp_path: Path, seed: int) -> None:
    """Per type: count, added, kept, first and last time, in SQLite's order (first time, then
    least id), with ties on time, duplicates and events of the day's previous file."""
    rng = random.Random(seed)
    (tmp_path / "memory").mkdir()
    memory = collect._Spool(tmp_path / "memory", budget=1 << 30)
    sqlite = collect._SqliteSpool(tmp_path / "spool.sqlite")
    try:
        for _ in range(rng.randint(1, 6)):
            rows = [(f"e{rng.randrange(400)}", "2026-01-01", rng.randrange(30),
                     rng.choice(["A", "B", "C", "", "D"]), b"{}") for _ in range(60)]
            assert memory.add_events(rows) == sqlite.add_events(rows)
        for _ in range(rng.randrange(40)):
            row = (f"e{rng.randrange(500)}", "2026-01-01", rng.randrange(30),
                   rng.choice(["A", "B", "E"]), b"{}")
            memory.add_previous(row)
            sqlite.add_previous(row)
        assert memory.day_types("2026-01-01") == sqlite.day_types("2026-01-01")
        assert memory.day_types("2026-01-02") == sqlite.day_types("2026-01-02") == []
    finally:
        memory.close()
        sqlite.close()


def test_an_older_day_that_gains_only_a_reject_keeps_its_file_and_files_the_reject(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The daily scan leaves an older day's raw file alone when it brings no new event; a
    reject of that day (here an event nested too deep) is still filed, not dropped."""
    older = DAY - timedelta(days=1)
    stand_in.add_events(synthetic_events(older, 20, seed=41))
    storage = LocalStorage(tmp_path / "store")
    fetch_days(make_client(stand_in), [older], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    stored = storage.raw_path(older).read_bytes()
    assert not storage.rejected_path(older).exists()
    base = synthetic_events(older, 1, seed=42)[0]
    stand_in.add_events([{**base, "id": "deep-older", "payload": nested(300, "bottom")}])
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                      now=STAND_IN_NOW, log=log,
                      since=datetime.combine(older, datetime.min.time(), tzinfo=timezone.utc),
                      unreachable=lambda day: None)
    assert scan.days[older].added == 0 and scan.days[older].rejected == 1
    assert storage.raw_path(older).read_bytes() == stored  # left as it was
    (record,) = [orjson.loads(line)
                 for line in storage.rejected_path(older).read_bytes().splitlines()]
    assert record["event"]["id"] == "deep-older"
    assert record["reason"] == "nested deeper than 254 levels"


@pytest.mark.parametrize(("odd_at", "tz"), [
    ("9999-12-31T23:00:00Z", "UTC"),  # its day is the last date: the next day's start overflows
    ("9999-12-31T20:00:00Z", "Asia/Tokyo"),  # already the year 10000 in the zone
    ("0001-01-01T01:00:00Z", "America/New_York"),  # still the year 0 in the zone
    ("0001-01-01T10:00:00Z", "Asia/Tokyo"),  # its day's start is in the year 0
    ("0001-01-01T00:00:00+01:00", "UTC"),  # the year 0 once in UTC
])
@pytest.mark.parametrize("id_kind", ["text id", "integer id"])  # _Classifier / classify alone
def test_an_event_time_out_of_datetime_range_is_rejected_not_fatal(
        odd_at: str, tz: str, id_kind: str, stand_in: PigmentStandIn, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An eventTimestamp whose day (or its next day's start) lies outside datetime's range goes
    to the rejects with its reason; the rest of the day lands and the scan goes on."""
    # The stand-in cannot place such an event either: as an unparseable time, outside any day.
    from pigment_audit_assets_tests import stand_in as stand_in_module
    exact = stand_in_module._parse_timestamp

    def parse(text: str) -> datetime:
        try:
            return exact(text)
        except OverflowError as error:
            raise ValueError(str(error)) from error

    monkeypatch.setattr(stand_in_module, "_parse_timestamp", parse)
    fill(stand_in, [DAY], 60, tz=tz)
    odd_id: Any = "odd-time" if id_kind == "text id" else 4242
    ingested = datetime.combine(DAY, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=12)
    odd = {"id": odd_id, "eventType": "X", "eventTimestamp": odd_at,
           "ingestionTimestamp": ingested.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    stand_in.add_events([(odd, ingested)])
    storage = LocalStorage(tmp_path / "store")
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone(tz), storage, now=STAND_IN_NOW,
                      log=log)
    truth = sorted(event["id"] for event in stand_in.visible_events(event_day=DAY, tz=tz))
    assert sorted(load_ids(storage.raw_path(DAY))) == truth and len(truth) == 60
    assert scan.rejected == 1 and scan.days[DAY].rejected == 1
    (record,) = [orjson.loads(line)
                 for line in storage.rejected_path(DAY).read_bytes().splitlines()]
    assert record["event"] == odd
    assert record["reason"] == collect.OUT_OF_RANGE


def test_a_far_future_ingestion_time_does_not_move_the_watermark(
        stand_in: PigmentStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = synthetic_events(DAY, 50, seed=21)
    # Ingested (says Pigment) three days after this machine's clock: STAND_IN_NOW, less a
    # minute so that the stand-in serves it, and the scan's clock three days behind.
    ahead = (STAND_IN_NOW - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    bogus = dict(events[0], id="bogus-ingestion", ingestionTimestamp=ahead)
    stand_in.add_events([*events, bogus])
    storage = LocalStorage(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                            now=STAND_IN_NOW - timedelta(days=3), log=log)
    newest = max(datetime.fromisoformat(event["ingestionTimestamp"].replace("Z", "+00:00"))
                 for event in events)
    assert result.newest_ingested == newest  # the watermark a daily run would move to
    assert f"({ahead[:19]}Z the latest)" in caplog.text
    ids = [orjson.loads(line)["id"] for line in (tmp_path / "raw" / f"{DAY}.jsonl").read_bytes()
           .splitlines()]
    assert "bogus-ingestion" in ids and len(ids) == 51  # its event kept all the same


@pytest.mark.parametrize("seconds_per_look", [0.0, 31.0])
def test_progress_is_logged_by_time_not_by_pages(
        seconds_per_look: float, stand_in: PigmentStandIn, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A progress line at most every PROGRESS_EVERY_SECONDS: none for a quick scan however
    many pages (each is an event in a Dagster run's log), one a page when pages are slow."""
    fill(stand_in, [DAY], 1000)  # 10 pages of 100, and the day after's stragglers
    looks = iter(range(10_000))
    monkeypatch.setattr(collect, "monotonic", lambda: next(looks) * seconds_per_look)
    with caplog.at_level(logging.INFO):
        scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), LocalStorage(tmp_path),
                          now=STAND_IN_NOW, log=log)
    progress = [record.getMessage() for record in caplog.records
                if record.getMessage().endswith("events so far.")]
    assert scan.pages >= 10
    if seconds_per_look:
        assert len(progress) == scan.pages
        assert progress[0] == "Fetched 1 pages, 100 events so far."
    else:
        assert progress == []


def test_the_collector_leaves_objects_of_before_the_scan_alone(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The scan freezes what existed before it (a Dagster process's heap: full collections
    walked it again and again) and unfreezes it after; a process that froze its own objects
    already (the command line) keeps them frozen."""
    fill(stand_in, [DAY], 300)
    frozen_during: list[int] = []

    def scan() -> None:
        fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), LocalStorage(tmp_path),
                   now=STAND_IN_NOW, log=log,
                   on_page=lambda _: frozen_during.append(gc.get_freeze_count()))

    assert gc.get_freeze_count() == 0
    scan()
    assert frozen_during and min(frozen_during) > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen_during.clear()
        scan()
        assert min(frozen_during) > 0 and gc.get_freeze_count() > 0  # not unfrozen by the scan
    finally:
        gc.unfreeze()


def test_the_csv_step_leaves_objects_of_before_it_alone(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the scan: the CSV of a day is written with the objects of before it frozen."""
    fill(stand_in, [DAY], 300)
    storage = LocalStorage(tmp_path)
    fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage, now=STAND_IN_NOW,
               log=log)
    frozen_during: list[int] = []
    write = table_module.write_stored_csv

    def recording(*args: Any, **kwargs: Any) -> Any:
        frozen_during.append(gc.get_freeze_count())
        return write(*args, **kwargs)

    monkeypatch.setattr(table_module, "write_stored_csv", recording)
    summary = table_module.write_day_csv(storage, DAY, owner="a test", log=log)
    assert summary.rows == 300
    assert frozen_during[0] > 0 and gc.get_freeze_count() == 0


def test_a_stored_line_that_cannot_be_placed_moves_to_the_rejects(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """A raw file edited by hand (an event without an id): the next scan of the day cannot
    sort it into the file, and keeps it in the day's rejects with the reason, not nowhere."""
    fill(stand_in, [DAY], 50)
    storage = LocalStorage(tmp_path)
    edited = b'{"eventType":"UserLoggedIn","eventTimestamp":"' + DAY.isoformat().encode() \
        + b'T10:00:00.000Z","note":"no id"}'
    storage.write_bytes(storage.raw_key(DAY), edited + b"\n")
    scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                      now=STAND_IN_NOW, log=log)
    rejects = [orjson.loads(line) for line in
               storage.read_bytes(storage.rejected_key(DAY)).splitlines()]  # type: ignore[union-attr]
    assert [(record["reason"], record["event"]["note"]) for record in rejects] == [
        ("in the stored raw file, but no id", "no id")]
    assert scan.days[DAY].rejected == 1 and scan.days[DAY].events == 50


def _rewrite_day(storage: LocalStorage, tmp_path: Path, *, only_if_added: bool) -> Any:
    """One scan's write of DAY that found nothing new (as the daily scan's overlap does)."""
    spool = collect._Spool(Path(tempfile.mkdtemp(dir=tmp_path)), 1 << 20)
    try:
        return collect._merge_and_write(spool, storage, DAY, parse_zone("UTC"), log, None,
                                        partial_scan=False, only_if_added=only_if_added,
                                        still_held=lambda: None)
    finally:
        spool.close()


@pytest.mark.parametrize("only_if_added", [False, True])
def test_a_stored_line_that_cannot_be_placed_is_filed_once_and_never_lost(
        only_if_added: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewritten again and again, the day files a hand-edited line (spaces and all) once; a
    file left as it was keeps the line and files nothing; and a scan stopped between the
    rejects and the raw file leaves the line on record in one of them."""
    storage = LocalStorage(tmp_path / "data")
    good = orjson.dumps({"id": "g1", "eventType": "T", "eventTimestamp": f"{DAY}T10:00:00Z"})
    edited = b'{"eventType": "T", "eventTimestamp": "' + DAY.isoformat().encode() + \
        b'T11:00:00Z", "note": "no id"}'
    storage.write_bytes(storage.raw_key(DAY), good + b"\n" + edited + b"\n")
    (tmp_path / "spools").mkdir()
    spools = tmp_path / "spools"
    writer = storage.writer

    def stopped(key: str) -> Any:  # the raw file's write fails: a scan killed there
        if key == storage.raw_key(DAY):
            raise OSError("stopped")
        return writer(key)

    monkeypatch.setattr(storage, "writer", stopped)
    if not only_if_added:
        with pytest.raises(OSError, match="stopped"):
            _rewrite_day(storage, spools, only_if_added=False)
        assert b"no id" in (storage.read_bytes(storage.rejected_key(DAY)) or b"")  # on record
    monkeypatch.setattr(storage, "writer", writer)
    for _ in range(3):
        day_file = _rewrite_day(storage, spools, only_if_added=only_if_added)
    raw = storage.read_bytes(storage.raw_key(DAY)) or b""
    rejects = (storage.read_bytes(storage.rejected_key(DAY)) or b"").splitlines()
    if only_if_added:  # the file stays as it was, the line in it: nothing to file
        assert b"no id" in raw and rejects == [] and day_file.rejected == 0
    else:
        assert b"no id" not in raw and len(rejects) == 1 and day_file.rejected == 1


def test_a_reject_ingested_after_the_runs_days_is_left_to_its_own_days_run(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """An event without an id, ingested on a later day: a run of an earlier day sees it (its
    scan reads everything ingested since the day's start) and filed it under its own day, and
    the later day's run filed it again: one event, rejected on two days."""
    later = DAY + timedelta(days=1)
    for day in (DAY, later):
        stand_in.add_events(synthetic_events(day, 20, seed=day.toordinal()))
    no_id = {"eventType": "UserInvited", "eventTimestamp": f"{later}T11:59:00Z",
             "ingestionTimestamp": f"{later}T12:00:00Z"}
    stand_in.add_events([no_id])
    storage = LocalStorage(tmp_path)
    zone = parse_zone("UTC")
    first = fetch_days(make_client(stand_in), [DAY], zone, storage, now=STAND_IN_NOW, log=log)
    assert first.days[DAY].rejected == 0 and not storage.exists(storage.rejected_key(DAY))
    assert first.outside_range == 21  # the later day's 20 events and the reject
    second = fetch_days(make_client(stand_in), [later], zone, storage, now=STAND_IN_NOW,
                        log=log)
    assert second.days[later].rejected == 1
    # A range over both files it once, under its ingestion day.
    both = fetch_days(make_client(stand_in), [DAY, later], zone, storage, now=STAND_IN_NOW,
                      log=log)
    assert (both.days[DAY].rejected, both.days[later].rejected) == (0, 1)
