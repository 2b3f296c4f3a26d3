"""Import records in bounded memory (issue 11): same files, ids in scratch, big records streamed.

The record keeps its format (existing records, and the tests and tools that read ``eventIds``,
see the same JSON); what changes is that no list of a day's ids is held while pushing. These
tests compare the streamed writer and reader with ``orjson`` on the same records, run a push
with every threshold at 0 (so the streamed reader, the id files and the SQLite id set carry a
small day), and measure Python's own allocations while saving and reading a 300,000-id record.
"""

from __future__ import annotations

import io
import logging
import random
import tracemalloc
from pathlib import Path

import orjson
import pytest

from pigment_audit_assets.core import imports as imports_module
from pigment_audit_assets.core import record_io
from pigment_audit_assets.core.imports import push_day, read_record, save_record
from pigment_audit_assets.core.record_io import IdFile, IdSet, read_json_stream, write_json
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets_tests.conftest import CONFIGURATION_ID, DAY, make_client
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

log = logging.getLogger(__name__)


def random_id(rng: random.Random) -> str:
    """Ids with what JSON must escape: quotes, backslashes, control characters, non-ASCII."""
    alphabet = 'abc019-_ "\\/\n\t\x00é😀,[]{}:'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def random_record(rng: random.Random, tmp_path: Path, as_files: bool) -> tuple[dict, dict]:
    """A record with lists of ids, and the same with the lists as id files (or lists)."""
    plain: dict = {"day": DAY.isoformat(), "imports": []}
    held: dict = {"day": DAY.isoformat(), "imports": []}
    for number in range(rng.randint(0, 5)):
        ids = [random_id(rng) for _ in range(rng.choice([0, 1, 3, 50]))]
        entry = {"importId": rng.choice([None, f"imp-{number}"]), "configurationId": "c",
                 "chunk": number + 1, "rows": len(ids), "status": "Completed",
                 "report": {"errors": ['"eventIds": [ inside a string'], "insertedCount": 1}}
        plain["imports"].append({**entry, "eventIds": ids})
        if as_files:
            ids_file = IdFile(tmp_path / f"{rng.random()}.ids")
            ids_file.extend(ids)
            held["imports"].append({**entry, "eventIds": ids_file})
        else:
            held["imports"].append({**entry, "eventIds": ids})
    return plain, held


@pytest.mark.parametrize("as_files", [True, False])
def test_the_streamed_writer_writes_what_orjson_writes(tmp_path: Path, as_files: bool) -> None:
    rng = random.Random(11)
    for _ in range(40):
        plain, held = random_record(rng, tmp_path, as_files)
        for indent in (True, False):
            out = io.BytesIO()
            write_json(out, held, indent=indent)
            assert out.getvalue() == orjson.dumps(
                plain, option=orjson.OPT_INDENT_2 if indent else 0)


def test_the_streamed_reader_reads_what_orjson_reads(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_io, "BLOCK", 7)  # tokens and ids straddle every read
    monkeypatch.setattr(record_io, "ID_BLOCK", 5)
    monkeypatch.setattr(record_io, "ID_BATCH", 2)
    rng = random.Random(12)
    files = iter(range(10**6))
    for _ in range(40):
        plain, _ = random_record(rng, tmp_path, as_files=False)
        for layout in (orjson.OPT_INDENT_2, 0):
            data = orjson.dumps(plain, option=layout)
            # One value, or several (a journal: one entry per line).
            values = list(read_json_stream(io.BytesIO(data + b"\n" + data), lambda: IdFile(
                tmp_path / f"read-{next(files)}.ids")))
            assert len(values) == 2
            for value in values:
                for entry in value["imports"]:
                    assert isinstance(entry["eventIds"], IdFile)
                    entry["eventIds"] = list(entry["eventIds"])
                assert value == plain
    with pytest.raises(ValueError):
        list(read_json_stream(io.BytesIO(b'{"imports": [{"eventIds": ["a", "b"'), lambda: IdFile(
            tmp_path / "cut.ids")))


def test_an_id_set_in_sqlite_answers_as_a_set(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(13)
    ids = [random_id(rng) for _ in range(500)]
    source = IdFile(tmp_path / "a.ids")
    source.extend(ids[:300])
    for limit in (0, 10**6):
        monkeypatch.setattr(record_io, "SET_IDS", limit)
        found = IdSet(tmp_path / f"set-{limit}", [source, ids[200:400]])
        assert (found.ids is None) == (limit == 0)
        assert len(found) == len(set(ids[:400]))
        assert sorted(found) == sorted(set(ids[:400]))
        assert all(event_id in found for event_id in ids[:400])
        assert not any(event_id in found for event_id in set(ids[400:]) - set(ids[:400]))
        found.close()


@pytest.mark.parametrize("thresholds", ["defaults", "all streamed"])
def test_a_push_with_ids_in_scratch_pushes_each_event_once(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        thresholds: str) -> None:
    if thresholds == "all streamed":
        monkeypatch.setattr(record_io, "SET_IDS", 0)
        monkeypatch.setattr(imports_module, "WHOLE_RECORD_BYTES", 0)
    storage = LocalStorage(tmp_path)
    events = synthetic_events(DAY, 60, seed=21)
    storage.write_bytes(storage.raw_key(DAY), b"".join(orjson.dumps(e) + b"\n" for e in events))
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    # A record of an earlier run, in the old form (lists), as orjson wrote it: 10 pushed.
    storage.write_bytes(storage.import_record_key(DAY), orjson.dumps({
        "day": DAY.isoformat(), "imports": [
            {"importId": "earlier", "configurationId": CONFIGURATION_ID, "chunk": 1,
             "rows": 10, "bytes": 10, "status": "Completed", "pushedAt": "x",
             "eventIds": [event["id"] for event in events[:10]]}]}))
    outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 4096,
                       poll_seconds=0.01, log=log)
    assert outcome.already_pushed == 10 and outcome.rows_pushed == 50
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(
        event["id"] for event in events[10:])
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    recorded = [event_id for entry in record["imports"] for event_id in entry["eventIds"]]
    assert sorted(recorded) == sorted(event["id"] for event in events)
    assert [entry["rows"] for entry in record["imports"]] == [
        len(entry["eventIds"]) for entry in record["imports"]]
    assert outcome.chunks == len(record["imports"]) - 1 > 2  # several chunks of 4 KiB
    assert outcome.unverified == {}
    # Again: nothing left to push, and the record read back (streamed or whole) is the same.
    again = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 4096,
                     poll_seconds=0.01, log=log)
    assert again.chunks == 0 and again.already_pushed == 60
    assert orjson.loads(storage.import_record_path(DAY).read_bytes()) == record


def test_saving_and_reading_a_big_record_holds_no_list_of_its_ids(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """300,000 ids (about 12 MiB of record): Python's peak stays a few MB, not the 30+ MB
    that the ids as Python strings would take."""
    monkeypatch.setattr(imports_module, "WHOLE_RECORD_BYTES", 0)
    storage = LocalStorage(tmp_path / "store")
    ids = IdFile(tmp_path / "big.ids")
    for start in range(0, 300_000, 10_000):
        ids.extend([f"{number:08d}-4c1e-8a7b-{number:012d}" for number in
                    range(start, start + 10_000)])
    record = {"day": DAY.isoformat(), "imports": [
        {"importId": "big", "configurationId": "c", "chunk": 1, "rows": 300_000,
         "status": "Completed", "eventIds": ids}]}
    tracemalloc.start()
    try:
        save_record(storage, DAY, record)
        _, saving = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        loaded = read_record(storage, DAY, tmp_path / "work")
        found = IdSet(tmp_path / "set", [loaded["imports"][0]["eventIds"]])
        _, reading = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert storage.import_record_path(DAY).stat().st_size > 12 * 2**20
    assert saving < 6 * 2**20 and reading < 6 * 2**20, (saving, reading)
    assert len(found) == 300_000 and "00123456-4c1e-8a7b-000000123456" in found
    assert "00123456-4c1e-8a7b-000000123457" not in found
    found.close()
    # The file is the one orjson writes: anything that reads the record sees no change.
    plain = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert len(plain["imports"][0]["eventIds"]) == 300_000
    assert storage.import_record_path(DAY).read_bytes() == orjson.dumps(
        plain, option=orjson.OPT_INDENT_2)
