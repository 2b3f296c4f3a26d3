"""Split a CSV into push-sized chunks, only between records, each with the header.

Chunking copies bytes: records are never decoded or re-encoded. A record ends at a line feed
outside any quoted cell; a quoted cell may hold line feeds and doubled quotes, so a line feed
ends a record only when the quotes since the record's start are even. Per block, only the
quotes and line feeds are looked at (to count the records ending in it); where each record
ends, quote parity per line, is worked out only in the blocks where a chunk boundary falls.
Our CSVs are written as ``csv.writer`` writes them (QUOTE_MINIMAL, CRLF), so the chunks hold
exactly the records the old decode-and-re-encode wrote, byte for byte. The trick was earned by
``benchmarks/push_csv.py``: 386 MiB in 50 MiB chunks took 15 s of CPU re-encoding rows, and
takes about 0.5 s copying bytes.

The source (a path, or a binary stream such as an object store's reader) is read in blocks, so
memory holds a block or two and the record being completed, whatever the file's size. Pushing
a chunk streams it from disk instead of building it in memory; all chunks are planned before
the first push, so a record too large for the chunk size fails before anything was sent.

A chunk is either a file of its own (header + records), or, with ``in_place`` and a local
file, a byte range of the source sent after the header: nothing is copied, and the kernel's
writes of the chunk files (most of the push's CPU in ``benchmarks/push_csv.py``) go away. The
range is read through the source's open descriptor, so a CSV replaced by a rename during the
push is still read as it was when chunked.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import stat
from bisect import bisect_right
from collections.abc import Collection, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import accumulate, compress, count, repeat
from operator import add, and_, not_
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConfigError

MEBIBYTE = 1024 * 1024
BLOCK_BYTES = 256 * 1024  # read size: the same CPU as 1-4 MiB blocks, less memory
# Python's csv module refuses cells over 131,072 characters by default; a cell is as long as
# the event's text. 2**31 - 1 is the most every platform's C long holds. Set where csv reads,
# not at import: the limit is process-wide and anyone may lower it again.
FIELD_LIMIT = 2**31 - 1


@dataclass
class Chunk:
    """One chunk ready to push: the header plus whole records.

    Its bytes are the file at ``path``, or (``path`` None) ``header`` followed by the
    ``bytes - len(header)`` bytes of the open file ``source_fd`` from ``offset``.
    """

    index: int
    path: Path | None
    rows: int = 0
    bytes: int = 0
    id_index: int | None = None  # the id column's position, if the CSV has one
    header: bytes = b""
    source_fd: int | None = None
    offset: int = 0

    def open_body(self) -> BinaryIO:
        """A binary reader of the chunk's bytes, from the start (one per push attempt)."""
        if self.path is not None:
            return open(self.path, "rb")
        assert self.source_fd is not None
        return _RangeBody(self.header, self.source_fd, self.offset,
                          self.bytes - len(self.header))

    def discard(self) -> None:
        """Free the chunk's disk space once pushed (a byte range holds none)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def iter_event_ids(self) -> Iterator[str]:
        """The event ids of the chunk's records, in order, read back from its bytes.

        Not kept in memory while chunking: a day's ids (about 90 MB for a million events)
        would outweigh the chunk being pushed. Read them while the chunk's file (or source) is
        there.
        """
        if self.id_index is None:
            return
        index = self.id_index
        csv.field_size_limit(FIELD_LIMIT)
        with io.TextIOWrapper(self.open_body(), newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)  # the header
            for row in reader:
                yield row[index]

    @property
    def event_ids(self) -> list[str]:
        """:meth:`iter_event_ids` as a list."""
        return list(self.iter_event_ids())


class _RangeBody(io.RawIOBase):
    """The header, then ``length`` bytes of the file ``fd`` from ``offset`` (``os.preadv``:
    the descriptor's position is never moved, so chunks of one file can be read in turn).

    ``len()`` and ``tell()`` let requests send a ``Content-Length`` and stream the body.
    """

    def __init__(self, header: bytes, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self._header, self._fd = header, fd
        self._start, self._total = offset, len(header) + length
        self._position = 0

    def __len__(self) -> int:
        return self._total - self._position

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._total - self._position)
        if wanted <= 0:
            return 0
        header = len(self._header)
        if self._position < header:
            size = min(wanted, header - self._position)
            view[:size] = self._header[self._position:self._position + size]
        else:
            size = os.preadv(self._fd, [view[:wanted]],
                             self._start + self._position - header)
            if size == 0:
                raise OSError(f"the CSV being pushed ended {self._total - self._position:,} "
                              "bytes early: it was truncated while the day was pushed")
        self._position += size
        return size


def chunk_size_bytes(chunk_size_mb: float, setting: str) -> int:
    """Megabytes (MiB, as the community script) to bytes; rejects non-positive or non-finite
    sizes."""
    if not chunk_size_mb or not math.isfinite(chunk_size_mb) or chunk_size_mb <= 0:
        raise ConfigError(f"{setting} must be a positive number of megabytes, not {chunk_size_mb}.")
    if not math.isfinite(chunk_size_mb * MEBIBYTE):
        raise ConfigError(f"{setting} {chunk_size_mb} is too large: give a number of megabytes "
                          "such as 480 (the community script's chunk size).")
    return int(chunk_size_mb * MEBIBYTE)


# All bytes but the double quote and the line feed: what bytes.translate deletes.
_NOT_QUOTE_OR_LF = bytes(set(range(256)) - {0x22, 0x0A})


def _record_ends(data: bytes) -> list[int]:
    """Offsets just past each record-ending line feed of ``data``, which starts at a record.

    Every step is a C-level pass over the lines (map, accumulate, compress): a Python step per
    record would cost as much as the re-encoding this replaces.
    """
    lines = data.split(b"\n")
    lines.pop()  # after the last line feed: no record ends there
    line_ends = map(add, accumulate(map(len, lines)), count(1))
    if b'"' not in data:
        return list(line_ends)
    parities = map(and_, accumulate(map(bytes.count, lines, repeat(b'"'))), repeat(1))
    return list(compress(line_ends, map(not_, parities)))


@dataclass
class _Run:
    """Whole records, in parts (a record may span blocks): their bytes and their count."""

    parts: list[bytes | memoryview]
    size: int
    rows: int

    def joined(self) -> tuple[bytes, list[int]]:
        """The run as one buffer, and where each of its records ends."""
        buffer = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        buffer = bytes(buffer)  # a memoryview slice becomes bytes: split and count want them
        ends = _record_ends(buffer)
        if len(ends) != self.rows:  # the two ways of counting must agree
            raise AssertionError(f"{len(ends)} record ends found, {self.rows} counted")
        return buffer, ends


def _runs(stream: BinaryIO) -> Iterator[_Run]:
    """The stream as runs of whole records, one per block that completes a record.

    Only the count of records ending in a block is found per block, on its quotes and line
    feeds alone (``translate`` keeps those; a line feed between quotes is inside a cell), and
    the last record end by searching back from the block's end. Where each record ends is
    worked out (:meth:`_Run.joined`) only for the runs a chunk boundary falls in.
    """
    pending: list[bytes | memoryview] = []  # the parts of a record not yet complete
    pending_bytes = odd = 0  # odd: the block starts inside a quoted cell
    while block := stream.read(BLOCK_BYTES):
        if type(block) is not bytes:  # a stream may hand out bytearrays or memoryviews
            block = bytes(block)
        # Doubled quotes ("" inside a cell, or an empty cell) change no parity and hold no
        # line feed: dropped, so the pieces are about as many as the lines, not the quotes.
        marks = block.translate(None, _NOT_QUOTE_OR_LF).replace(b'""', b"")
        pieces = marks.split(b'"')
        quotes = len(pieces) - 1
        # Pieces alternate outside / inside quotes; an inside piece holds only line feeds.
        quoted_feeds = sum(map(len, pieces[1 - odd::2]))
        rows = len(marks) - quotes - quoted_feeds
        after = (odd + quotes) & 1  # inside a quoted cell at the block's end?
        if not rows:
            pending.append(block)
            pending_bytes += len(block)
            odd = after
            continue
        # The last record end: the last line feed with even quotes after it.
        feed = block.rfind(b"\n")
        tail_quotes = block.count(b'"', feed + 1)
        while (after + tail_quotes) & 1:
            previous = block.rfind(b"\n", 0, feed)
            tail_quotes += block.count(b'"', previous + 1, feed)
            feed = previous
        last = feed + 1
        view = memoryview(block)
        yield _Run([*pending, view[:last] if last < len(block) else block],
                   pending_bytes + last, rows)
        pending = [view[last:]] if last < len(block) else []
        pending_bytes = len(block) - last
        odd = after  # the quotes after the last record end are the tail's
    if pending:
        if odd:
            raise csv.Error("the CSV ends inside a quoted cell")
        # A last record without its line end (or with a bare CR), ended as csv.writer ends it.
        end = b"\n" if bytes(pending[-1][-1:]) == b"\r" else b"\r\n"
        pending.append(end)
        yield _Run(pending, pending_bytes + len(end), 1)


def _cells(record: bytes) -> list[str]:
    """The cells of one record (only parsed for an id, or for an error message)."""
    text = record.decode("utf-8")
    if '"' not in text:
        return text.rstrip("\r\n").split(",")
    csv.field_size_limit(FIELD_LIMIT)
    return next(csv.reader(io.StringIO(text, newline="")), [])


class _ChunkWriter:
    """Chunks being filled greedily, each up to ``max_bytes`` including the header: files,
    or byte ranges of the source when ``source_fd`` is set."""

    def __init__(self, work_dir: Path, max_bytes: int, header: bytes, id_index: int | None,
                 setting: str, files: ExitStack, source_fd: int | None) -> None:
        self.work_dir, self.max_bytes, self.header = work_dir, max_bytes, header
        self.id_index, self.setting, self.files = id_index, setting, files
        self.chunks: list[Chunk] = []
        self.current: Chunk | None = None
        self.handle: BinaryIO | None = None
        self.source_fd = source_fd  # set: chunks are ranges of this file
        self.position = len(header)  # the source offset of the next record placed

    def put(self, parts: list[bytes | memoryview], size: int) -> None:
        """Add ``size`` bytes of whole records (``parts``) to the current chunk."""
        if self.handle is not None:
            self.handle.writelines(parts)
        self.position += size

    def _new_chunk(self) -> None:
        if self.handle is not None:
            self.handle.close()
        number = len(self.chunks) + 1
        ranged = self.source_fd is not None  # a byte range of the source: nothing written
        self.current = Chunk(index=number,
                             path=None if ranged else self.work_dir / f"chunk-{number:05d}.csv",
                             bytes=len(self.header), id_index=self.id_index, header=self.header,
                             source_fd=self.source_fd, offset=self.position)
        self.chunks.append(self.current)
        if ranged:
            return
        # The ExitStack closes it if chunking stops; _new_chunk or the end otherwise.
        self.handle = self.files.enter_context(open(self.current.path, "wb"))  # noqa: SIM115
        self.handle.write(self.header)

    def _too_big(self, record: bytes) -> ConfigError:
        cells = _cells(record)
        event_id = (cells[self.id_index] if self.id_index is not None
                    and self.id_index < len(cells) else "")
        return ConfigError(
            f"{self.setting} is too small: a record of {len(record):,} bytes (event "
            f"{event_id or 'without id'}) plus the {len(self.header):,}-byte header "
            f"does not fit in {self.max_bytes:,} bytes. Raise {self.setting}.")

    def write(self, view: memoryview, start: int, ends: list[int]) -> None:
        """Place the consecutive records of ``view`` from ``start`` ending at ``ends``."""
        first, stop = 0, len(ends)
        while first < stop:
            current = self.current
            room = self.max_bytes - current.bytes if current is not None else -1
            last = bisect_right(ends, start + room, first, stop) - 1  # the last that fits
            if last < first:  # not even the next record fits in this chunk
                if len(self.header) + ends[first] - start > self.max_bytes:
                    raise self._too_big(bytes(view[start:ends[first]]))
                self._new_chunk()
                continue
            end = ends[last]
            self.put([view[start:end]], end - start)
            current.bytes += end - start
            current.rows += last - first + 1
            first, start = last + 1, end


def write_chunks(
    source: BinaryIO | Path,
    max_bytes: int,
    work_dir: Path,
    *,
    setting: str = "chunk_size_mb",
    skip_ids: Collection[str] = frozenset(),
    id_column: str = "id",
    in_place: bool = False,
) -> list[Chunk]:
    """Write the records of ``source`` whose id is not in ``skip_ids`` into chunk files.

    ``source`` is a CSV file's path or a binary stream positioned at its start (not closed
    here). Each chunk is at most ``max_bytes`` bytes, header included. Raises
    :class:`ConfigError` naming ``setting`` when one record cannot fit in a chunk.

    With ``in_place``, a ``source`` that is an open regular file ending in a line feed, and no
    id to skip, the chunks are byte ranges of it instead of files (see :class:`Chunk`): keep
    ``source`` open until they are pushed.
    """
    if work_dir.exists():
        shutil.rmtree(work_dir)  # chunks of an interrupted run are rebuilt, never trusted
    work_dir.mkdir(parents=True)
    with ExitStack() as files:
        stream = (files.enter_context(open(source, "rb"))
                  if isinstance(source, (str, os.PathLike)) else source)
        range_fd = _range_source(source) if in_place and not skip_ids else None
        runs = _runs(stream)
        first = next(runs, None)
        if first is None:  # an empty file: no header, no records
            return []
        buffer, ends = first.joined()
        header = buffer[:ends[0]]
        names = _cells(header)
        id_index = names.index(id_column) if id_column in names else None
        writer = _ChunkWriter(work_dir, max_bytes, header, id_index, setting, files, range_fd)
        skipping = bool(skip_ids) and id_index is not None
        start, ends = ends[0], ends[1:]
        while True:
            if not skipping:
                writer.write(memoryview(buffer), start, ends)
            else:
                _write_unskipped(writer, memoryview(buffer), start, ends, id_index, skip_ids)
            run = next(runs, None)
            if run is None:
                break
            current = writer.current
            while (not skipping and current is not None
                   and current.bytes + run.size <= max_bytes):
                # The common case: the whole run fits in the chunk, copied as it is.
                writer.put(run.parts, run.size)
                current.bytes += run.size
                current.rows += run.rows
                run = next(runs, None)
                if run is None:
                    break
            if run is None:
                break
            (buffer, ends), start = run.joined(), 0
        if writer.handle is not None:
            writer.handle.close()
    return writer.chunks


def _range_source(source: BinaryIO | Path) -> int | None:
    """The descriptor of ``source`` if its chunks can be byte ranges of it: an open regular
    file, read from its start, that ends in a line feed (else chunking adds the last record's
    line end)."""
    if isinstance(source, (str, os.PathLike)):
        return None  # opened here and closed on return: ranges would outlive it
    try:
        fd = source.fileno()
        status = os.fstat(fd)
        if source.tell() != 0:
            return None
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None
    if not stat.S_ISREG(status.st_mode) or not status.st_size:
        return None
    return fd if os.pread(fd, 1, status.st_size - 1) == b"\n" else None


def _write_unskipped(writer: _ChunkWriter, view: memoryview, start: int, ends: list[int],
                     id_index: int, skip_ids: Collection[str]) -> None:
    """Write the records whose id is not in ``skip_ids``, runs of kept records at a time."""
    run_start, run_first = start, 0
    for number, end in enumerate(ends):
        cells = _cells(bytes(view[start:end]))
        event_id = cells[id_index] if id_index < len(cells) else ""
        if event_id and event_id in skip_ids:
            writer.write(view, run_start, ends[run_first:number])
            run_start, run_first = end, number + 1
        start = end
    writer.write(view, run_start, ends[run_first:])
