"""Where files live under the storage root, and how they are written.

All file access of the pipeline goes through :class:`Storage`, so object storage can later
replace the local folder without touching the assets. Every file a later step trusts is
written to a temporary name in the same folder and renamed into place: a crash (even
``kill -9``) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from .errors import ConfigError

STORAGE_VARIABLE = "PIGMENT_AUDIT_STORAGE_URL"
DEFAULT_STORAGE_URL = "pigment_audit_data"


def storage_root_from_url(url: str) -> Path:
    """Turn ``PIGMENT_AUDIT_STORAGE_URL`` (a folder path or ``file://`` URL) into a folder path."""
    if not url or not url.strip():
        raise ConfigError(f"{STORAGE_VARIABLE} is empty: set it to a local folder path.")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(parsed.path if parsed.scheme == "file" else url).expanduser()
        return path.resolve()
    raise ConfigError(
        f"{STORAGE_VARIABLE}={url!r}: only local folders (a path or file://) are supported "
        f"so far, not {parsed.scheme}://."
    )


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Storage:
    """The layout of files under one storage root, with the day in every file name."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_url(cls, url: str) -> Storage:
        """Build a storage from ``PIGMENT_AUDIT_STORAGE_URL``'s value."""
        return cls(storage_root_from_url(url))

    def raw_path(self, day: date) -> Path:
        """The day's events as the API returned them, one JSON object per line."""
        return self.root / "raw" / f"{day.isoformat()}.jsonl"

    def rejected_path(self, day: date) -> Path:
        """Events of the day's scan that could not be placed in any day."""
        return self.root / "rejected" / f"{day.isoformat()}.rejected.jsonl"

    def csv_path(self, day: date) -> Path:
        """The day's flattened, density-ordered CSV."""
        return self.root / "csv" / f"{day.isoformat()}.csv"

    def import_record_path(self, day: date) -> Path:
        """The day's import record: event ids pushed, chunks, import ids, reports."""
        return self.root / "imports" / f"{day.isoformat()}.json"

    def remove_stale_scratch(self, older_than_seconds: float = 6 * 3600) -> list[Path]:
        """Remove scratch left by killed processes: work folders and ``.*.tmp`` files.

        Only what has not been touched for ``older_than_seconds``, so a step running elsewhere
        at the same time keeps its files. Returns what was removed.
        """
        cutoff = time.time() - older_than_seconds
        stale = [path for path in (*self.root.glob("work/*"), *self.root.glob("*/.*.tmp"))
                 if path.stat().st_mtime < cutoff]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale

    def work_dir(self, name: str) -> Path:
        """A scratch folder for one step's temporary files (chunks, scan spools)."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
