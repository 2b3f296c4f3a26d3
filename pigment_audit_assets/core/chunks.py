"""Split a CSV into push-sized chunk files, only between records, each with the header.

A quoted cell may hold newlines, so records are read with the ``csv`` module rather than
split on line ends, and written back with the same writer settings (lossless for the cells
our CSVs hold). Chunks are files, so pushing one streams it from disk instead of building it
in memory; all chunks are written before the first push, so a record too large for the chunk
size fails before anything was sent.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError

MEBIBYTE = 1024 * 1024


@dataclass
class Chunk:
    """One chunk file ready to push: the header plus whole records."""

    index: int
    path: Path
    rows: int = 0
    bytes: int = 0
    id_index: int | None = None  # the id column's position, if the CSV has one

    @property
    def event_ids(self) -> list[str]:
        """The event ids of the chunk's records, in order, read back from the chunk file.

        Not kept in memory while chunking: a day's ids (about 90 MB for a million events)
        would outweigh the chunk being pushed. Read them while the chunk file exists.
        """
        if self.id_index is None:
            return []
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)  # the header
            return [row[self.id_index] for row in reader]


class _RowEncoder:
    """Encodes one CSV record to bytes exactly as ``csv.writer`` writes it to a file."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, quoting=csv.QUOTE_MINIMAL)

    def encode(self, row: list[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(row)
        return self._buffer.getvalue().encode("utf-8")


def chunk_size_bytes(chunk_size_mb: float, setting: str) -> int:
    """Megabytes (MiB, as the community script) to bytes; rejects non-positive sizes."""
    if not chunk_size_mb or chunk_size_mb <= 0:
        raise ConfigError(f"{setting} must be a positive number of megabytes, not {chunk_size_mb}.")
    return int(chunk_size_mb * MEBIBYTE)


def write_chunks(
    source: BinaryIO | Path,
    max_bytes: int,
    work_dir: Path,
    *,
    setting: str = "chunk_size_mb",
    skip_ids: Collection[str] = frozenset(),
    id_column: str = "id",
) -> list[Chunk]:
    """Write the records of ``source`` (a CSV file or binary stream) not in ``skip_ids``.

    Each chunk is at most ``max_bytes`` bytes, header included. Raises :class:`ConfigError`
    naming ``setting`` when one record cannot fit in a chunk.
    """
    if work_dir.exists():
        shutil.rmtree(work_dir)  # chunks of an interrupted run are rebuilt, never trusted
    work_dir.mkdir(parents=True)
    chunks: list[Chunk] = []
    encoder = _RowEncoder()
    with contextlib.ExitStack() as stack:
        binary = source if not isinstance(source, Path) else stack.enter_context(
            open(source, "rb"))
        text = stack.enter_context(io.TextIOWrapper(binary, encoding="utf-8", newline=""))
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            return chunks
        header_bytes = encoder.encode(header)
        id_index = header.index(id_column) if id_column in header else None
        current: Chunk | None = None
        handle = None
        try:
            for row in reader:
                event_id = row[id_index] if id_index is not None else ""
                if event_id and event_id in skip_ids:
                    continue
                record = encoder.encode(row)
                if len(header_bytes) + len(record) > max_bytes:
                    raise ConfigError(
                        f"{setting} is too small: a record of {len(record):,} bytes (event "
                        f"{event_id or 'without id'}) plus the {len(header_bytes):,}-byte header "
                        f"does not fit in {max_bytes:,} bytes. Raise {setting}."
                    )
                if current is None or current.bytes + len(record) > max_bytes:
                    if handle is not None:
                        handle.close()
                    current = Chunk(index=len(chunks) + 1,
                                    path=work_dir / f"chunk-{len(chunks) + 1:05d}.csv",
                                    id_index=id_index)
                    chunks.append(current)
                    handle = open(current.path, "wb")  # noqa: SIM115 - spans iterations
                    handle.write(header_bytes)
                    current.bytes = len(header_bytes)
                handle.write(record)
                current.bytes += len(record)
                current.rows += 1
        finally:
            if handle is not None:
                handle.close()
    return chunks
