"""The pure core: flattening, column order, cell text, chunking, day windows, atomic files."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from pigment_audit_assets.core.chunks import chunk_size_bytes, write_chunks
from pigment_audit_assets.core.collect import _Classifier, classify
from pigment_audit_assets.core.days import (
    check_lookback,
    day_of,
    day_start,
    parse_timestamp,
    parse_zone,
)
from pigment_audit_assets.core.errors import ConfigError, LookbackError
from pigment_audit_assets.core.flatten import flatten_event
from pigment_audit_assets.core.storage import LocalStorage, atomic_write, storage_from_url
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets_tests.synthetic import synthetic_events

ROOT = Path(__file__).resolve().parent.parent
# The community script is not part of this repository (it is Pigment's community post's).
REFERENCE_VARIABLE = "PIGMENT_AUDIT_REFERENCE_SCRIPT"
REFERENCE_SCRIPT = Path(os.environ.get(REFERENCE_VARIABLE)
                        or ROOT.parent / "shared" / "reference" / "pigment_audit_tool.py")
REFERENCE_MISSING = (
    f"needs the community script pigment_audit_tool.py (from Pigment's community post "
    f"'Extracting usage data from a Pigment workspace'), not found at {REFERENCE_SCRIPT}: save "
    f"it anywhere and run with {REFERENCE_VARIABLE}=/path/to/pigment_audit_tool.py")


def write_jsonl(path: Path, events: list[object]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    return path


def read_records(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


# --- flattening ----------------------------------------------------------------------------

def test_flatten_names_nested_keys_and_list_items_like_the_script() -> None:
    event = {"id": "e1", "actor": {"userId": "u", "tags": ["a", {"k": 1}]},
             "payload": {"applications": [{"id": "x"}, {"id": "y", "n": None}], "empty": {},
                         "none": []}}
    row, collided = flatten_event(event)
    assert row == {"id": "e1", "actor_userId": "u", "actor_tags_0": "a", "actor_tags_1_k": 1,
                   "payload_applications_0_id": "x", "payload_applications_1_id": "y",
                   "payload_applications_1_n": None}
    assert collided == []


def test_flatten_collision_keeps_the_last_value_and_reports_it() -> None:
    row, collided = flatten_event({"a_b": 1, "a": {"b": 2}, "c": 3})
    assert row == {"a_b": 2, "c": 3}
    assert collided == ["a_b"]


def test_csv_reports_collisions(tmp_path: Path) -> None:
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": "1", "a_b": 1, "a": {"b": 2}}, {"id": "2"}])
    summary = write_csv([raw], tmp_path / "out.csv")
    assert summary.collisions == 1
    assert summary.collided_columns == {"a_b": 1}
    assert read_records(tmp_path / "out.csv") == [["id", "a_b"], ["1", "2"], ["2", ""]]


# --- CSV: order and cells ------------------------------------------------------------------

def test_columns_by_density_ties_by_first_appearance(tmp_path: Path) -> None:
    events = [{"id": "1", "z": 1}, {"id": "2", "b": 1, "a": 1}, {"id": "3", "a": 2, "z": 2},
              {"id": "4", "b": 5}]
    summary = write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], tmp_path / "out.csv")
    # id: 4; z, b, a: 2 each, in order of first appearance.
    assert summary.columns == ["id", "z", "b", "a"]


def test_cells_are_written_as_the_script_writes_them(tmp_path: Path) -> None:
    event = {"id": "é1", "none": None, "yes": True, "no": False, "int": 7, "float": 1.5,
             "big": 12345678901234567890, "text": 'comma, "quote"\nnew line\r\nend ✓ 日本'}
    csv_path = tmp_path / "out.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", [event])], csv_path)
    data = csv_path.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")  # no BOM
    assert data.endswith(b"\r\n")
    assert data.split(b"\r\n", 1)[1] == (
        'é1,,True,False,7,1.5,12345678901234567890,"comma, ""quote""\nnew line\r\nend ✓ 日本"\r\n'
    ).encode()
    assert read_records(csv_path)[1][-1] == event["text"]


def test_empty_day_gives_an_empty_csv(tmp_path: Path) -> None:
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"")
    summary = write_csv([raw], tmp_path / "out.csv")
    assert (summary.rows, summary.columns, summary.bytes) == (0, [], 0)
    assert (tmp_path / "out.csv").read_bytes() == b""


def script_csv(raw: Path, out: Path) -> bytes:
    """The community script's CSV of the events of ``raw``, each read as ``response.json()``
    reads a page (Python's json: integers exact). In its own process: the script rewires
    the root logger when imported."""
    program = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("tool", {str(REFERENCE_SCRIPT)!r})
tool = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool)
class Client:
    def get_audit_events(self, start, end):
        with open({str(raw)!r}, "rb") as handle:
            for line in handle:
                yield json.loads(line)
assert tool.create_audit_csv(Client(), "2025-09-01", "2025-09-01", {str(out)!r})
"""
    subprocess.run([sys.executable, "-c", program], check=True, capture_output=True)
    return out.read_bytes()


@pytest.mark.skipif(not REFERENCE_SCRIPT.is_file(), reason=REFERENCE_MISSING)
def test_csv_is_byte_identical_to_the_community_script(tmp_path: Path) -> None:
    events = synthetic_events(date(2025, 9, 1), 400, seed=3)
    raw = write_jsonl(tmp_path / "raw.jsonl", events)
    ours = tmp_path / "ours.csv"
    write_csv([raw], ours)
    assert ours.read_bytes() == script_csv(raw, tmp_path / "theirs.csv")


# --- chunks --------------------------------------------------------------------------------

AWKWARD = [
    {"id": "1", "text": "plain"},
    {"id": "2", "text": "line one\nline two\r\nline three"},
    {"id": "3", "text": '"quoted", with commas, and "" doubled quotes'},
    {"id": "4", "text": "日本語 ✓ émoji 🎉" * 5},
    {"id": "5", "text": "\n\n\n"},
    {"id": "6", "text": "", "other": None},
    {"id": "7", "text": "x" * 150},
]


def test_chunks_split_only_between_records_and_carry_the_header(tmp_path: Path) -> None:
    csv_path = tmp_path / "day.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", AWKWARD * 5)], csv_path)
    header, *records = read_records(csv_path)
    limit = 320
    chunks = write_chunks(csv_path, limit, tmp_path / "chunks")
    assert len(chunks) > 3
    rebuilt = []
    for chunk in chunks:
        data = chunk.path.read_bytes()
        assert len(data) == chunk.bytes <= limit
        chunk_header, *chunk_records = read_records(chunk.path)
        assert chunk_header == header
        assert len(chunk_records) == chunk.rows == len(chunk.event_ids)
        assert [record[0] for record in chunk_records] == chunk.event_ids
        rebuilt += chunk_records
    assert rebuilt == records
    # Byte for byte, the records are the source file's.
    body = b"".join(chunk.path.read_bytes().split(b"\r\n", 1)[1] for chunk in chunks)
    assert body == csv_path.read_bytes().split(b"\r\n", 1)[1]


def test_chunks_skip_events_already_pushed(tmp_path: Path) -> None:
    csv_path = tmp_path / "day.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", AWKWARD)], csv_path)
    chunks = write_chunks(csv_path, 10_000, tmp_path / "chunks", skip_ids={"2", "5"})
    assert [event_id for chunk in chunks for event_id in chunk.event_ids] == ["1", "3", "4", "6",
                                                                              "7"]


def test_chunk_too_small_for_a_record_names_the_setting(tmp_path: Path) -> None:
    csv_path = tmp_path / "day.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", AWKWARD)], csv_path)
    with pytest.raises(ConfigError, match=r"--chunk-size is too small.*130 bytes.*event 4"):
        write_chunks(csv_path, 120, tmp_path / "chunks", setting="--chunk-size")
    assert chunk_size_bytes(0.5, "chunk_size_mb") == 524288
    with pytest.raises(ConfigError, match="chunk_size_mb"):
        chunk_size_bytes(0, "chunk_size_mb")


def test_chunks_of_an_empty_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "day.csv"
    csv_path.write_bytes(b"")
    assert write_chunks(csv_path, 1000, tmp_path / "chunks") == []


# --- days ----------------------------------------------------------------------------------

def test_day_windows_follow_the_zone_including_dst() -> None:
    paris = parse_zone("Europe/Paris")
    # 2025-03-30 has 23 hours in Paris.
    assert day_start(date(2025, 3, 30), paris) == datetime(2025, 3, 29, 23, tzinfo=timezone.utc)
    assert day_start(date(2025, 3, 31), paris) == datetime(2025, 3, 30, 22, tzinfo=timezone.utc)
    assert day_of(parse_timestamp("2025-03-30T22:30:00Z"), paris) == date(2025, 3, 31)
    assert day_of(parse_timestamp("2025-03-30T21:59:59.999Z"), paris) == date(2025, 3, 30)


def test_parse_timestamp_forms() -> None:
    utc = datetime(2025, 9, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)
    assert parse_timestamp("2025-09-01T10:00:00.123Z") == utc
    assert parse_timestamp("2025-09-01T12:00:00.123+02:00") == utc
    assert parse_timestamp("2025-09-01T10:00:00.123") == utc  # no offset: UTC
    for bad in ("yesterday", "", None, 12, "2025-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/Los_Angeles"])
def test_the_scans_classifier_agrees_with_classify(zone: str) -> None:
    """The scan's fast path (a window, Pigment's Z form) places events as classify does."""
    place = _Classifier(parse_zone(zone))
    stamps = ["2026-11-23T00:00:00.317Z", "2026-11-22T23:30:00Z", "2026-11-23T07:59:59.999999Z",
              "2026-11-23T08:00:00Z", "2026-03-29T01:30:00Z", "2026-11-23T00:00:00+02:00",
              "2026-11-23T00:00:00", "2026-11-23t00:00:00z", "2026-11-23T00:00:00+01:00Z",
              "garbage Z", "Z", "", None, 17]
    for stamp in stamps * 2:  # twice: the second time through the remembered window
        for event_id in ("e1", 7):
            item = {"id": event_id, "eventTimestamp": stamp}
            assert place(item) == classify(item, parse_zone(zone)), (stamp, event_id)
    assert place(["not", "an", "object"]) == classify(["not", "an", "object"], parse_zone(zone))


def test_unknown_zone_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_TIMEZONE='Mars/Olympus'"):
        parse_zone("Mars/Olympus")


def test_lookback_guard() -> None:
    now = datetime(2026, 6, 30, 12, tzinfo=timezone.utc)
    utc = parse_zone("UTC")
    check_lookback((now - timedelta(days=179)).date(), utc, now)
    with pytest.raises(LookbackError, match="more than 180 days"):
        check_lookback((now - timedelta(days=181)).date(), utc, now)


# --- storage -------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "raw" / "2025-09-01.jsonl"
    with atomic_write(target, "wb") as handle:
        handle.write(b"old\n")
    with pytest.raises(RuntimeError), atomic_write(target, "wb") as handle:
        handle.write(b"half of the new")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old\n"
    assert sorted(path.name for path in target.parent.iterdir()) == ["2025-09-01.jsonl"]


def test_storage_layout_and_urls(tmp_path: Path) -> None:
    storage = storage_from_url(f"file://{tmp_path}")
    assert isinstance(storage, LocalStorage)
    day = date(2025, 9, 1)
    assert storage.raw_path(day) == tmp_path / "raw" / "2025-09-01.jsonl"
    assert storage.csv_path(day) == tmp_path / "csv" / "2025-09-01.csv"
    assert "rejected" in storage.rejected_path(day).name
    assert "2025-09-01" in storage.rejected_path(day).name
    with pytest.raises(ConfigError, match=r"PIGMENT_AUDIT_STORAGE_URL.*ftp://.*s3://"):
        storage_from_url("ftp://host/audit")
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_STORAGE_URL"):
        storage_from_url(" ")


def test_csv_writer_output_reads_back_with_csv_module(tmp_path: Path) -> None:
    events = synthetic_events(date(2025, 9, 2), 200, seed=9)
    csv_path = tmp_path / "out.csv"
    summary = write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], csv_path)
    header, *records = read_records(csv_path)
    assert header == summary.columns and len(records) == len(events) == summary.rows
    by_id = {record[0]: dict(zip(header, record, strict=True)) for record in records}
    for event in events:
        flat, _ = flatten_event(event)
        buffer = io.StringIO()
        csv.writer(buffer).writerow([flat.get(name) for name in header])
        expected = next(csv.reader(io.StringIO(buffer.getvalue())))
        assert list(by_id[event["id"]].values()) == expected
