"""The chunking this project used before chunks were found on bytes (commit 327ea3d).

Records parsed with ``csv`` and re-encoded row by row. Kept as the reference the new chunking
must match byte for byte (test_chunks_bytes.py) and as the "old" side of
benchmarks/push_csv.py.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Collection
from pathlib import Path

from pigment_audit_assets.core.chunks import Chunk
from pigment_audit_assets.core.errors import ConfigError


class _RowEncoder:
    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, quoting=csv.QUOTE_MINIMAL)

    def encode(self, row: list[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerow(row)
        return self._buffer.getvalue().encode("utf-8")


def reference_write_chunks(csv_path: Path, max_bytes: int, work_dir: Path, *,
                           setting: str = "chunk_size_mb",
                           skip_ids: Collection[str] = frozenset(),
                           id_column: str = "id") -> list[Chunk]:
    """The old ``write_chunks``: records read with ``csv``, re-encoded row by row."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    chunks: list[Chunk] = []
    if csv_path.stat().st_size == 0:
        return chunks
    encoder = _RowEncoder()
    with open(csv_path, newline="", encoding="utf-8") as source:
        reader = csv.reader(source)
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
                    handle = open(current.path, "wb")  # noqa: SIM115 - as it was
                    handle.write(header_bytes)
                    current.bytes = len(header_bytes)
                handle.write(record)
                current.bytes += len(record)
                current.rows += 1
        finally:
            if handle is not None:
                handle.close()
    return chunks
