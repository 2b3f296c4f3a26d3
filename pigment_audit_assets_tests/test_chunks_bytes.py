"""Chunking by bytes gives exactly the chunks of the old decode-and-re-encode chunking.

The old implementation is copied here as the reference; random CSVs as our writer writes them
(``csv.writer``, QUOTE_MINIMAL, CRLF) with quotes, embedded LF / CRLF / CR, commas, unicode and
empty cells are chunked both ways and compared file by file, with block sizes small enough that
records, quoted cells and the header straddle blocks.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import tracemalloc
from datetime import date
from pathlib import Path

import orjson
import pytest

from pigment_audit_assets.core import chunks as chunks_module
from pigment_audit_assets.core import imports as imports_module
from pigment_audit_assets.core.chunks import Chunk, chunk_size_bytes, write_chunks
from pigment_audit_assets.core.errors import ConfigError
from pigment_audit_assets.core.imports import push_day
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets.defs import checks
from pigment_audit_assets_tests.conftest import CONFIGURATION_ID, DAY, make_client
from pigment_audit_assets_tests.reference_chunks import reference_write_chunks
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

# --- the reference: chunks.py before the byte copy (commit 327ea3d), unchanged -------------


# --- random CSVs ---------------------------------------------------------------------------

PIECES = ["a", "plain", "x" * 40, ",", '"', '""', "\n", "\r\n", "\r", " ", "日本語", "é", "🎉",
          "Dupont, Jr.", '"The Boss"', "", "0", "-1.5"]


def random_cell(rng: random.Random) -> str:
    if rng.random() < 0.25:
        return ""
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))


def random_csv(rng: random.Random, path: Path) -> list[str]:
    """A CSV as ``csv.writer`` writes it; returns its ids (unique, some needing quotes)."""
    width = rng.randint(1, 8)
    header = [random_cell(rng) or f"c{column}" for column in range(width)]
    if rng.random() < 0.8:  # most have an id column, anywhere
        header[rng.randrange(width)] = "id"
    ids = []
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    for number in range(rng.randint(0, 60)):
        row = [random_cell(rng) for _ in range(width)]
        if "id" in header:
            event_id = f"e{number}" + rng.choice(["", ",x", '"q"', "\r\nline", "é"])
            row[header.index("id")] = event_id
            ids.append(event_id)
        writer.writerow(row)
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return ids


def chunk_facts(chunks: list[Chunk]) -> list[tuple[int, str, int, int, int | None, bytes]]:
    return [(chunk.index, chunk.path.name, chunk.rows, chunk.bytes, chunk.id_index,
             chunk.path.read_bytes()) for chunk in chunks]


def both(csv_path: Path, max_bytes: int, tmp_path: Path, **options: object
         ) -> tuple[object, object]:
    """The two implementations' chunks (facts, or the error's text) for the same input."""
    outcomes = []
    for name, function in (("old", reference_write_chunks), ("new", write_chunks)):
        try:
            outcomes.append(chunk_facts(function(csv_path, max_bytes, tmp_path / name,
                                                 **options)))
        except ConfigError as error:
            outcomes.append(str(error))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("seed", range(60))
def test_random_csvs_chunk_byte_for_byte_as_before(tmp_path: Path, seed: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    # Tiny blocks: records, quoted cells, CRLFs and the header straddle block edges.
    monkeypatch.setattr(chunks_module, "BLOCK_BYTES", rng.choice([1, 2, 7, 64, 1 << 20]))
    csv_path = tmp_path / "day.csv"
    ids = random_csv(rng, csv_path)
    size = csv_path.stat().st_size
    compared = 0
    for max_bytes in sorted({rng.randint(1, size + 10) for _ in range(4)} | {size + 10}):
        old, new = both(csv_path, max_bytes, tmp_path, setting="--chunk-size")
        assert new == old
        compared += isinstance(old, list)
        skip = set(rng.sample(ids, k=len(ids) // 3)) if ids else {"none"}
        old, new = both(csv_path, max_bytes, tmp_path, skip_ids=skip)
        assert new == old
    assert compared  # at least the size that fits everything chunked without an error
    # The chunk files hold whole records: their ids read back as the reference's.
    new_chunks = write_chunks(csv_path, size + 10, tmp_path / "ids")
    assert [i for chunk in new_chunks for i in chunk.event_ids] == ids


def body_bytes(chunk: Chunk) -> bytes:
    with chunk.open_body() as body:
        return body.read()


@pytest.mark.parametrize("seed", range(30))
def test_chunks_in_place_are_the_chunk_files_bytes(tmp_path: Path, seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte ranges of the open CSV (``in_place``) send exactly what the chunk files hold."""
    rng = random.Random(seed)
    monkeypatch.setattr(chunks_module, "BLOCK_BYTES", rng.choice([1, 7, 64, 1 << 20]))
    csv_path = tmp_path / "day.csv"
    ids = random_csv(rng, csv_path)
    size = csv_path.stat().st_size
    for max_bytes in sorted({rng.randint(size // 4 + 1, size + 10) for _ in range(3)}
                            | {size + 10}):
        try:
            files = write_chunks(csv_path, max_bytes, tmp_path / "files")
        except ConfigError as error:
            with open(csv_path, "rb") as source, pytest.raises(ConfigError) as raised:
                write_chunks(source, max_bytes, tmp_path / "ranges", in_place=True)
            assert str(raised.value) == str(error)
            continue
        with open(csv_path, "rb") as source:
            ranges = write_chunks(source, max_bytes, tmp_path / "ranges", in_place=True)
            assert all(chunk.path is None for chunk in ranges)
            assert not any((tmp_path / "ranges").iterdir())  # nothing copied to disk
            assert ([(c.index, c.rows, c.bytes, c.id_index) for c in ranges]
                    == [(c.index, c.rows, c.bytes, c.id_index) for c in files])
            # Twice: each push attempt reads the range from its start.
            for _ in range(2):
                assert [body_bytes(c) for c in ranges] == [c.path.read_bytes() for c in files]
            assert [len(c.open_body()) for c in ranges] == [c.bytes for c in ranges]
            assert [i for chunk in ranges for i in chunk.event_ids] == ids


def test_chunks_in_place_read_the_csv_as_chunked_even_if_it_is_replaced(tmp_path: Path) -> None:
    """A CSV step that renames a new CSV over the day's while it is pushed changes nothing
    already chunked: the ranges are read through the descriptor opened for chunking."""
    csv_path = tmp_path / "day.csv"
    csv_path.write_bytes(b"id,text\r\n" + b"".join(b"e%d,old\r\n" % n for n in range(50)))
    before = csv_path.read_bytes()
    with open(csv_path, "rb") as source:
        chunks = write_chunks(source, 200, tmp_path / "chunks", in_place=True)
        replacement = tmp_path / "new.csv"
        replacement.write_bytes(b"id,text\r\n" + b"e0,new\r\n")
        replacement.replace(csv_path)
        bodies = [body_bytes(chunk) for chunk in chunks]
    assert len(chunks) > 2 and all(body.startswith(b"id,text\r\n") for body in bodies)
    assert b"id,text\r\n" + b"".join(body[len(b"id,text\r\n"):] for body in bodies) == before


def test_chunks_in_place_fall_back_to_files(tmp_path: Path) -> None:
    """Chunk files where a range cannot serve: ids to skip, a stream without a file behind
    it, a path (closed on return), a CSV whose last record has no line end, a stream not at
    its start."""
    csv_path = tmp_path / "day.csv"
    csv_path.write_bytes(b"id,text\r\n" + b"".join(b"e%d,a\r\n" % n for n in range(9)))
    data = csv_path.read_bytes()
    with open(csv_path, "rb") as source:
        skipped = write_chunks(source, 40, tmp_path / "a", skip_ids={"e3"}, in_place=True)
    streamed = write_chunks(io.BytesIO(data), 40, tmp_path / "b", in_place=True)
    by_path = write_chunks(csv_path, 40, tmp_path / "c", in_place=True)
    unended = tmp_path / "unended.csv"
    unended.write_bytes(data.rstrip(b"\r\n"))
    with open(unended, "rb") as source:
        no_line_end = write_chunks(source, 40, tmp_path / "d", in_place=True)
    header_only = tmp_path / "offset.csv"
    header_only.write_bytes(b"junk\n" + data)
    with open(header_only, "rb") as source:
        source.readline()
        offset = write_chunks(source, 40, tmp_path / "e", in_place=True)
    for chunks in (skipped, streamed, by_path, no_line_end, offset):
        assert chunks and all(chunk.path is not None and chunk.path.is_file()
                              for chunk in chunks)
    assert [i for chunk in skipped for i in chunk.event_ids] == [
        f"e{n}" for n in range(9) if n != 3]
    assert b"".join(body_bytes(c) for c in no_line_end).endswith(b"e8,a\r\n")
    assert [body_bytes(c) for c in offset] == [body_bytes(c) for c in streamed]


def test_several_chunks_from_a_stream_with_short_reads(tmp_path: Path) -> None:
    """A streaming reader (the object store's) may hand out fewer bytes than asked for."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.at = data, 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            piece = self.data[self.at:self.at + min(size, 5)]
            self.at += len(piece)
            return bytearray(piece)  # not bytes: the chunker must cope

    csv_path = tmp_path / "day.csv"
    rows = [["id", "text", "n"]] + [[f"e{n}", "a,\r\nb \"é\"\n" * (n % 4), ""] for n in range(60)]
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    stream = Trickle(csv_path.read_bytes())
    old = chunk_facts(reference_write_chunks(csv_path, 600, tmp_path / "old"))
    new = chunk_facts(write_chunks(stream, 600, tmp_path / "new"))
    assert len(old) > 2 and new == old
    assert not stream.closed  # the caller's stream is the caller's to close


def test_memory_stays_flat_whatever_the_size(tmp_path: Path) -> None:
    """A 40 MiB CSV in 16 MiB chunks: Python's allocations peak at a few blocks (and a cut
    block's lines), far below a chunk or the file."""
    rows = [["id", "text"]] + [[f"e{n}", 'a,"b"\r\nc' * (n % 50)] for n in range(2000)]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    body = buffer.getvalue().encode().split(b"\r\n", 1)[1]
    csv_path = tmp_path / "day.csv"
    with open(csv_path, "wb") as handle:
        handle.write(b"id,text\r\n")
        for _ in range(40 * 1024 * 1024 // len(body)):
            handle.write(body)
    tracemalloc.start()
    try:
        chunks = write_chunks(csv_path, 16 * 1024 * 1024, tmp_path / "chunks")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chunks) == 3  # every byte in a chunk, the 9-byte header once per chunk:
    assert sum(chunk.bytes for chunk in chunks) == csv_path.stat().st_size + 9 * (len(chunks) - 1)
    assert peak < 16 * chunks_module.BLOCK_BYTES  # 4 MiB, where a chunk is 16 MiB


@pytest.mark.parametrize("data", [b'id,text\r\n1,a\r\n2,"b\r\nc"', b"id,text\r\n1,a\r\n2,b\r",
                                  b"id,text\r\n1,a\r\n2,b", b"c\r\n1\r\n\r"])
def test_a_last_record_without_its_line_end_is_ended_as_before(tmp_path: Path,
                                                                data: bytes) -> None:
    csv_path = tmp_path / "day.csv"
    csv_path.write_bytes(data)
    old, new = both(csv_path, 1000, tmp_path)
    assert new == old and isinstance(new, list) and new[0][5].endswith(b"\r\n")


def test_a_header_only_or_empty_source_gives_no_chunks(tmp_path: Path) -> None:
    assert write_chunks(io.BytesIO(b""), 100, tmp_path / "a") == []
    assert write_chunks(io.BytesIO(b'id,"a\r\nb"\r\n'), 100, tmp_path / "b") == []


def test_a_record_too_big_names_the_setting_and_the_event(tmp_path: Path) -> None:
    data = b'id,text\r\n1,short\r\n"2,x","' + b"long\r\n" * 30 + b'"\r\n'
    with pytest.raises(ConfigError, match=r"^--chunk-size is too small: a record of 190 bytes "
                                          r"\(event 2,x\) plus the 9-byte header"):
        write_chunks(io.BytesIO(data), 120, tmp_path / "chunks", setting="--chunk-size")


def test_a_source_ending_inside_a_quoted_cell_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(csv.Error, match="inside a quoted cell"):
        write_chunks(io.BytesIO(b'id,text\r\n1,"open\r\n'), 100, tmp_path / "chunks")


@pytest.mark.parametrize("size", [float("nan"), float("inf"), float("-inf"), -1.0, 0.0])
def test_chunk_size_must_be_finite_and_positive(size: float) -> None:
    with pytest.raises(ConfigError, match=r"^--chunk-size must be a positive number of "
                                          r"megabytes, not "):
        chunk_size_bytes(size, "--chunk-size")
    assert chunk_size_bytes(50, "--chunk-size") == 50 * 1024 * 1024


def test_a_five_mebibyte_cell_goes_through_csv_chunks_and_checks(tmp_path: Path) -> None:
    """Past csv's default field limit (131,072 characters): write_csv, chunks and checks."""
    day = date(2025, 9, 1)
    storage = LocalStorage(tmp_path / "store")
    big = "é, \"quoted\"\r\n" * (5 * 1024 * 1024 // 15)  # 5 MiB of text needing quotes
    events = [{"id": "a", "eventTimestamp": "2025-09-01T10:00:00Z", "note": "small"},
              {"id": "b", "eventTimestamp": "2025-09-01T11:00:00Z", "note": big},
              {"id": "c", "eventTimestamp": "2025-09-01T12:00:00Z", "note": "small"}]
    raw = storage.raw_path(day)
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    csv_path = storage.csv_path(day)
    write_csv([raw], csv_path)
    assert csv_path.stat().st_size > 5 * 1024 * 1024
    default = csv.field_size_limit()
    try:
        # The limit is process-wide: put the default back before each step, so that each
        # one is shown to raise it itself (skip_ids parses ids from the record bytes).
        csv.field_size_limit(131_072)
        chunks = write_chunks(csv_path, 6 * 1024 * 1024, tmp_path / "chunks",
                              skip_ids={"a"})
        csv.field_size_limit(131_072)
        assert [chunk.event_ids for chunk in chunks] == [["b", "c"]]
        assert chunks[0].path.read_bytes() == csv_path.read_bytes().replace(
            b'a,2025-09-01T10:00:00Z,small\r\n', b"")
        with open(chunks[0].path, newline="", encoding="utf-8") as handle:
            assert list(csv.reader(handle))[1][-1] == big
        csv.field_size_limit(131_072)
        result = checks.check_csv_rows(storage, day)
        assert result.passed and result.metadata["csv_rows"].value == 3
        csv.field_size_limit(131_072)
        with pytest.raises(ConfigError, match=r"event b\)"):  # its id, read from the bytes
            write_chunks(csv_path, 1024 * 1024, tmp_path / "small")
    finally:
        csv.field_size_limit(default)


def test_a_day_is_pushed_from_byte_ranges_of_the_csv_as_it_was_chunked(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """push_day on local storage: chunks are ranges (no chunk file), Pigment receives the
    CSV's bytes, and a CSV renamed over the day's after the first chunk changes nothing."""
    storage = LocalStorage(tmp_path / "store")
    events = synthetic_events(DAY, 60, seed=5)
    storage.raw_path(DAY).parent.mkdir(parents=True)
    storage.raw_path(DAY).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    data = storage.csv_path(DAY).read_bytes()
    planned: list[Chunk] = []

    def spy(*args: object, **options: object) -> list[Chunk]:
        planned.extend(write_chunks(*args, **options))  # type: ignore[arg-type]
        return planned

    monkeypatch.setattr(imports_module, "write_chunks", spy)

    def replace_csv(_: int) -> None:  # the CSV step re-run while the day is pushed
        replacement = tmp_path / "new.csv"
        replacement.write_bytes(data.split(b"\r\n", 1)[0] + b"\r\n")
        replacement.replace(storage.csv_path(DAY))

    outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID,
                       len(data) // 3, poll_seconds=0.01, log=logging.getLogger(__name__),
                       on_chunk=replace_csv)
    assert len(planned) >= 3 and all(chunk.path is None for chunk in planned)
    header = data.split(b"\r\n", 1)[0] + b"\r\n"
    bodies = [record.body for record in stand_in.imports]
    assert all(body.startswith(header) for body in bodies)
    assert header + b"".join(body[len(header):] for body in bodies) == data
    assert outcome.rows_pushed == 60
    assert [row["id"] for row in stand_in.pushed_rows()] == [
        row["id"] for row in csv.DictReader(io.StringIO(data.decode(), newline=""))]
