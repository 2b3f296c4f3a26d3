"""Where the project's files live: a local folder or an object store, behind one interface.

Every file a later step trusts appears whole or not at all, and the previous version stays
readable until the new one is complete:

- :class:`LocalStorage` writes to a temporary name beside the file, fsyncs it and renames it
  into place, so a crash (even ``kill -9``) leaves the old file or the new one.
- :class:`ObjectStorage` (S3, GCS, Azure Blob, through `obstore`) stages the new object in the
  local scratch folder, then uploads it in one PUT, or one multipart upload that obstore aborts on
  any error. An object store has no rename: nothing is ever copied and then deleted.

The core and the assets only see keys (``raw/2026-11-20.jsonl``) and :class:`Storage`'s
methods; they never learn which backend they talk to. Scratch (scan spools, chunk files)
always stays on local disk, in a per-step folder under :func:`scratch_root`, removed afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import sqlite3
import stat
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import urlparse

from .errors import ConfigError, StorageError

STORAGE_VARIABLE = "PIGMENT_AUDIT_STORAGE_URL"
SCRATCH_VARIABLE = "PIGMENT_AUDIT_SCRATCH_DIR"
DEFAULT_STORAGE_URL = "pigment_audit_data"
OBJECT_SCHEMES = {"s3": "S3", "s3a": "S3", "gs": "Google Cloud Storage",
                  "az": "Azure Blob Storage", "abfs": "Azure Blob Storage",
                  "abfss": "Azure Blob Storage", "azure": "Azure Blob Storage"}
STALE_SCRATCH_SECONDS = 6 * 3600
UNSAVED_FOLDER = "unsaved-imports"
UPLOAD_PART_BYTES = 8 * 1024 * 1024  # multipart above this; S3's parts must be ≥ 5 MiB


def scratch_root() -> Path:
    """The local folder for scratch: ``PIGMENT_AUDIT_SCRATCH_DIR``, else the system's temp."""
    configured = os.environ.get(SCRATCH_VARIABLE)
    try:
        root = Path(configured).expanduser() if configured else (
            Path(tempfile.gettempdir()) / "pigment_audit_scratch")
    except RuntimeError as error:  # ~user of no such user
        raise ConfigError(f"{SCRATCH_VARIABLE}={configured!r}: {error}: set it to a local "
                          "folder.") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"Cannot create the scratch folder {root} ({error.strerror}): "
                           f"set {SCRATCH_VARIABLE} to a writable local folder.") from error
    return root


def _scratch_error(action: str, folder: Path, error: Exception) -> StorageError:
    """A failure of local scratch, naming the folder and ``PIGMENT_AUDIT_SCRATCH_DIR``."""
    return StorageError(f"Could not {action} in the scratch folder {folder} "
                        f"({getattr(error, 'strerror', None) or error}): free space there, or "
                        f"set {SCRATCH_VARIABLE} to a local folder with more room.")


@contextlib.contextmanager
def naming_scratch(folder: Path, action: str) -> Iterator[None]:
    """A full disk or quota in the block, where only scratch is written locally (ENOSPC,
    EDQUOT, or SQLite's "database or disk is full" from a spool spilled to disk), becomes a
    :class:`StorageError` naming ``folder`` and ``PIGMENT_AUDIT_SCRATCH_DIR`` rather than a
    bare ``OSError`` or a traceback."""
    try:
        yield
    except StorageError:
        raise
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _scratch_error(action, folder, error) from error
    except sqlite3.OperationalError as error:
        if "full" not in str(error):
            raise
        raise _scratch_error(action, folder, error) from error


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A fresh local folder for one step's temporary files, removed when the step ends.

    Named with a random suffix, so two runs of one day at once never share their chunks.
    """
    path = scratch_root() / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_scratch(older_than_seconds: float = STALE_SCRATCH_SECONDS) -> list[Path]:
    """Remove scratch folders left by killed processes, untouched for ``older_than_seconds``.

    A step running elsewhere at the same time keeps its folder. Returns what was removed.
    """
    cutoff = time.time() - older_than_seconds
    stale = []
    for path in scratch_root().iterdir():
        if path.name == UNSAVED_FOLDER:  # what a failed record save left: kept until read
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                stale.append(path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. A symbolic
    link is written through (its target is replaced, the link stays), an existing file keeps
    its permissions (a private file stays private), and what is not a regular file (a device
    such as ``/dev/stdout``, a pipe) is written in place: it cannot be renamed over.
    """
    try:
        existing = path.stat()  # through a link: /dev/stdout is a link to a pipe or a terminal
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode) \
            and not stat.S_ISDIR(existing.st_mode):
        with open(path, mode, **open_kwargs) as handle:
            yield handle
        return
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, mode, **open_kwargs) as handle:
            if existing is not None:
                os.chmod(temporary, stat.S_IMODE(existing.st_mode))
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


class Storage(ABC):
    """The project's files under one root, by key; the day is in every key.

    Methods that fail raise :class:`StorageError`, whose message names the object's URI and
    ``PIGMENT_AUDIT_STORAGE_URL``; a missing object raises ``FileNotFoundError`` from
    :meth:`open_read` and is ``None`` for :meth:`read_bytes`.
    """

    url: str
    setting: str = STORAGE_VARIABLE  # what errors tell to fix: the variable, or a YAML field

    # --- the layout ---------------------------------------------------------------------

    @staticmethod
    def raw_key(day: date) -> str:
        """The day's events as the API returned them, one JSON object per line."""
        return f"raw/{day.isoformat()}.jsonl"

    @staticmethod
    def rejected_key(day: date) -> str:
        """Events of the day's scans that could not be placed in any day."""
        return f"rejected/{day.isoformat()}.rejected.jsonl"

    @staticmethod
    def csv_key(day: date) -> str:
        """The day's flattened, density-ordered CSV."""
        return f"csv/{day.isoformat()}.csv"

    @staticmethod
    def import_record_key(day: date) -> str:
        """The day's import record: event ids pushed, chunks, import ids, reports."""
        return f"imports/{day.isoformat()}.json"

    @staticmethod
    def lease_key(day: date) -> str:
        """The lease the day's import step holds while it pushes."""
        return f"leases/import-{day.isoformat()}.json"

    @staticmethod
    def raw_lease_key(day: date) -> str:
        """The lease a scan holds while it merges and rewrites the day's raw file."""
        return f"leases/raw-{day.isoformat()}.json"

    # --- what each backend provides -----------------------------------------------------

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where ``key`` lives, as a user can look it up (a path or ``s3://...``)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abstractmethod
    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary reader that streams the object: memory stays bounded whatever its size."""

    @abstractmethod
    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary writer whose bytes replace the object only when the block ends normally."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version token for :meth:`replace`, or None if absent."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if it does not exist; False if it did (nothing written)."""

    @abstractmethod
    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Write the object only if it is still at ``version``; False if it changed."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens if it is absent."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a folder such as ``raw/``), sorted."""

    @abstractmethod
    def check_access(self) -> None:
        """Fail now, naming the variable or the bucket, if the storage cannot be used."""

    # --- built on the above -------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        """The whole object, or None if it does not exist (for small files: records, leases)."""
        try:
            with self.open_read(key) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object with ``data``, whole or not at all."""
        with self.writer(key) as handle:
            handle.write(data)

    def remove_stale_temporaries(self, older_than_seconds: float = STALE_SCRATCH_SECONDS
                                 ) -> list[Path]:
        """Remove temporary files killed writers left beside the files; what was removed.

        Only a local folder has any: an object store's writes are staged in local scratch.
        """
        return []

    def digest(self, key: str) -> str | None:
        """The SHA-256 of the object's bytes, streamed; None if it does not exist."""
        digest = hashlib.sha256()
        try:
            with self.open_read(key) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    def _error(self, action: str, key: str, error: BaseException) -> StorageError:
        detail = getattr(error, "strerror", None) or str(error).splitlines()[0][:300]
        return StorageError(f"Could not {action} {self.uri(key)} ({detail}). Check "
                            f"{self.setting}={self.url!r}: the folder or bucket must exist "
                            "and be writable with the credentials this process has.")


class LocalStorage(Storage):
    """Files in a local folder; writes go through :func:`atomic_write`."""

    def __init__(self, root: Path | str, *, setting: str = STORAGE_VARIABLE) -> None:
        self.root = Path(root)
        self.url = str(root)
        self.setting = setting

    def path(self, key: str) -> Path:
        """The local path of ``key``."""
        return self.root / key

    def raw_path(self, day: date) -> Path:
        """The day's raw file (the command line and tests read it directly)."""
        return self.path(self.raw_key(day))

    def rejected_path(self, day: date) -> Path:
        """The day's rejects file."""
        return self.path(self.rejected_key(day))

    def csv_path(self, day: date) -> Path:
        """The day's CSV."""
        return self.path(self.csv_key(day))

    def import_record_path(self, day: date) -> Path:
        """The day's import record."""
        return self.path(self.import_record_key(day))

    def uri(self, key: str) -> str:
        """The local path."""
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        """Whether the file exists."""
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        """The file's size."""
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise
        except OSError as error:
            raise self._error("read", key, error) from error

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """The open file."""
        try:
            handle = open(self.path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise
        except OSError as error:
            raise self._error("read", key, error) from error
        with handle:
            yield handle  # type: ignore[misc]

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """A temporary file beside the target, renamed over it at the end.

        Opening, writing and renaming the file fail with a :class:`StorageError`; an error of
        the caller's own code between writes passes unchanged.
        """
        def wrap(error: OSError) -> StorageError:
            return self._error("write", key, error)

        in_caller = False
        try:
            with atomic_write(self.path(key), "wb") as handle:
                in_caller = True
                yield _GuardedWriter(handle, wrap)  # type: ignore[misc]
                in_caller = False
        except StorageError:
            raise
        except OSError as error:
            if in_caller:  # raised by the caller's code, not by this file: not ours to rename
                raise
            raise wrap(error) from error

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes, and their digest as the version."""
        data = self.read_bytes(key)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def create(self, key: str, data: bytes) -> bool:
        """A complete temporary file hard-linked to the target name: linking fails if it exists."""
        target = self.path(key)
        try:
            with self._staged(target, data) as staged:
                try:
                    os.link(staged, target)
                except FileExistsError:
                    return False
            _fsync_folder(target.parent)
        except OSError as error:
            raise self._error("create", key, error) from error
        return True

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """Compare and swap under an exclusive lock on a ``.lock`` file beside the target."""
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target.with_name(f".{target.name}.lock"), "a+b") as lock:
                _lock(lock)
                current = self.read_versioned(key)
                if current is None or current[1] != version:
                    return False
                with atomic_write(target, "wb") as handle:
                    handle.write(data)
        except OSError as error:
            raise self._error("replace", key, error) from error
        return True

    def delete(self, key: str) -> None:
        """Remove the file."""
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as error:
            raise self._error("delete", key, error) from error

    def list(self, prefix: str) -> list[str]:
        """Keys of the files in the folder ``prefix``, hidden temporary files left out."""
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{path.name}" for path in folder.iterdir()
                      if path.is_file() and not path.name.startswith("."))

    def check_access(self) -> None:
        """The root can be created and written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".access-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StorageError(f"{self.setting}={self.url!r}: cannot write to {self.root} "
                               f"({error.strerror}). Point it at a writable folder.") from error

    def remove_stale_temporaries(self, older_than_seconds: float = STALE_SCRATCH_SECONDS
                                 ) -> list[Path]:
        """Remove ``.*.tmp`` files that killed processes left beside the files."""
        cutoff = time.time() - older_than_seconds
        stale = [path for path in self.root.glob("*/.*.tmp") if path.stat().st_mtime < cutoff]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    @contextlib.contextmanager
    def _staged(self, target: Path, data: bytes) -> Iterator[Path]:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(staged, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            yield staged
        finally:
            staged.unlink(missing_ok=True)


def _lock(handle: IO[bytes]) -> None:
    if os.name == "nt":  # pragma: no cover - msvcrt locks a byte range instead
        import msvcrt
        msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
        return
    import fcntl
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


class _GuardedWriter:
    """A writable handle whose own failures (``write``, ``flush``) become ``wrap(error)``.

    The error then names what failed (the stored file, the scratch folder), and the storage's
    context manager can let everything else raised in the caller's block pass unchanged.
    """

    def __init__(self, handle: IO[bytes], wrap: Callable[[OSError], StorageError]) -> None:
        self._handle = handle
        self._wrap = wrap

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except StorageError:
            raise
        except OSError as error:
            raise self._wrap(error) from error

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._handle.flush()
        except StorageError:
            raise
        except OSError as error:
            raise self._wrap(error) from error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class _StreamReader(io.RawIOBase):
    """A file-like reader over obstore's stream of byte blocks (for ``io.BufferedReader``).

    A failure of the stream itself becomes ``wrap(error)``: obstore raises its own exceptions
    (not ``OSError``) when a GET breaks off midway.
    """

    def __init__(self, blocks: Iterator[Any], wrap: Callable[[Exception], StorageError]) -> None:
        self._blocks = blocks
        self._wrap = wrap
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                block = next(self._blocks, None)
            except Exception as error:
                raise self._wrap(error) from error
            if block is None:
                return 0
            self._pending = memoryview(bytes(block))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class ObjectStorage(Storage):
    """Objects under ``scheme://bucket/prefix``, through obstore.

    obstore (the Python binding of Rust's ``object_store``) reads each cloud's standard
    configuration: for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``,
    ``AWS_ENDPOINT_URL``, instance and pod roles. An ``http://`` endpoint (MinIO, SeaweedFS on a
    private network, a test server) is allowed when ``AWS_ENDPOINT_URL`` names one.
    """

    def __init__(self, url: str, *, setting: str = STORAGE_VARIABLE) -> None:
        from obstore.store import from_url

        self.url = url
        self.setting = setting
        parsed = urlparse(url)
        self.scheme, self.bucket = parsed.scheme, parsed.netloc
        if not self.bucket:
            raise ConfigError(f"{setting}={url!r} names no bucket: write it as "
                              f"{parsed.scheme}://bucket/prefix.")
        self.prefix = parsed.path.strip("/")
        options: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        bucket_url = f"{parsed.scheme}://{self.bucket}"
        try:
            self.store = from_url(bucket_url, client_options=options or None)
        except Exception as error:  # obstore's configuration errors name the missing setting
            raise ConfigError(f"{setting}={url!r}: {str(error).splitlines()[0]}"
                              ) from error

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        """``scheme://bucket/prefix/key``."""
        return f"{self.scheme}://{self.bucket}/{self._path(key)}"

    def exists(self, key: str) -> bool:
        """A HEAD request."""
        import obstore

        try:
            obstore.head(self.store, self._path(key))
        except FileNotFoundError:
            return False
        except Exception as error:
            raise self._error("read", key, error) from error
        return True

    def size(self, key: str) -> int:
        """The object's size, from a HEAD request."""
        import obstore

        try:
            return int(obstore.head(self.store, self._path(key))["size"])
        except FileNotFoundError:
            raise
        except Exception as error:
            raise self._error("read", key, error) from error

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """A GET, streamed in blocks of at most 8 MiB."""
        import obstore

        try:
            result = obstore.get(self.store, self._path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
        except Exception as error:
            raise self._error("read", key, error) from error
        # Only the stream's own failures are wrapped (in _StreamReader): an error of the
        # caller's code in its block (its scratch disk full, say) passes unchanged.
        reader = io.BufferedReader(_StreamReader(
            iter(result.stream(min_chunk_size=UPLOAD_PART_BYTES)),
            lambda error: self._error("read", key, error)), buffer_size=1 << 20)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Stage in local scratch, then one PUT or one multipart upload (aborted on error)."""
        import obstore

        with scratch_dir("upload") as folder:
            staged = folder / "object"

            def wrap(error: OSError) -> StorageError:
                return _scratch_error(f"stage {self.uri(key)}", folder, error)

            in_caller = False
            try:
                with open(staged, "wb") as handle:
                    in_caller = True
                    yield _GuardedWriter(handle, wrap)  # type: ignore[misc]
                    in_caller = False
            except StorageError:
                raise
            except OSError as error:
                if in_caller:  # raised by the caller's code: it passes unchanged
                    raise
                raise wrap(error) from error  # opening or closing the staged file
            try:
                obstore.put(self.store, self._path(key), staged,
                            chunk_size=UPLOAD_PART_BYTES, max_concurrency=4)
            except Exception as error:
                raise self._error("write", key, error) from error

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The bytes and the object's ETag."""
        import obstore

        try:
            result = obstore.get(self.store, self._path(key))
            data = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except Exception as error:
            raise self._error("read", key, error) from error
        return data, str(result.meta.get("e_tag") or "")

    def create(self, key: str, data: bytes) -> bool:
        """A PUT with ``If-None-Match: *``."""
        import obstore

        try:
            obstore.put(self.store, self._path(key), data, mode="create")
        except FileExistsError:
            return False
        except Exception as error:
            if type(error).__name__ in ("AlreadyExistsError", "PreconditionError"):
                return False
            raise self._error("create", key, error) from error
        return True

    def replace(self, key: str, data: bytes, version: str) -> bool:
        """A PUT with ``If-Match: <ETag>``."""
        import obstore

        try:
            obstore.put(self.store, self._path(key), data,
                        mode={"e_tag": version})
        except Exception as error:
            if type(error).__name__ in ("PreconditionError", "NotModifiedError"):
                return False
            if isinstance(error, FileNotFoundError):
                return False
            raise self._error("replace", key, error) from error
        return True

    def delete(self, key: str) -> None:
        """A DELETE."""
        import obstore

        try:
            obstore.delete(self.store, self._path(key))
        except FileNotFoundError:
            return
        except Exception as error:
            raise self._error("delete", key, error) from error

    def list(self, prefix: str) -> list[str]:
        """A LIST under the prefix."""
        import obstore

        base = self._path(prefix.rstrip("/")) + "/"
        try:
            keys = [meta["path"] for batch in obstore.list(self.store, prefix=base)
                    for meta in batch]
        except Exception as error:
            raise self._error("list", prefix, error) from error
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(path[strip:] for path in keys)

    def check_access(self) -> None:
        """Write, read and delete a probe object: fails on a missing bucket, missing
        credentials or denied access, naming the bucket and the variables to check."""
        import obstore

        probe = self._path(f".access-probe-{uuid.uuid4().hex[:12]}")
        try:
            obstore.put(self.store, probe, b"")
            obstore.delete(self.store, probe)
        except Exception as error:
            raise StorageError(f"{self.setting}={self.url!r}: "
                               f"{self._access_hint(str(error))}.") from error

    def _access_hint(self, text: str) -> str:
        """What a failed probe's error text says to fix. Status codes are matched on the
        status line only ("status code: 401"): the text also holds the probe's random name and
        the store's request id, in which "401" or "403" turn up by chance."""
        # Credential errors first: S3 sends SignatureDoesNotMatch and InvalidAccessKeyId
        # with status 403 too, which would otherwise read as "access denied".
        if any(word in text for word in ("credential", "Credential", "InvalidAccessKeyId",
                                         "SignatureDoesNotMatch", "status code: 401",
                                         # no keys: the SDK asked the instance metadata
                                         "/latest/api/token", "/latest/meta-data")):
            return ("the credentials are missing or wrong: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or the role or the cloud's own variables)")
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return f"the bucket {self.bucket!r} does not exist: create it or fix {self.setting}"
        if any(word in text for word in ("AccessDenied", "Forbidden", "status code: 403")):
            return (f"access to the bucket {self.bucket!r} is denied: give these credentials "
                    "write access to it")
        return f"the store did not answer as expected: {text.splitlines()[0][:300]}"


def storage_from_url(url: str, setting: str = STORAGE_VARIABLE) -> Storage:
    """The storage ``PIGMENT_AUDIT_STORAGE_URL`` names: a folder, ``file://``, or an object
    store URL (``s3://bucket/prefix``, ``gs://``, ``az://``). Errors name ``setting``, where
    the URL came from."""
    if not url or not url.strip():
        raise ConfigError(f"{setting} is empty: set it to a local folder path or an "
                          "object store URL such as s3://bucket/prefix.")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(parsed.path if parsed.scheme == "file" else url).expanduser()
        return LocalStorage(path.resolve(), setting=setting)
    if parsed.scheme in OBJECT_SCHEMES:
        return ObjectStorage(url, setting=setting)
    raise ConfigError(f"{setting}={url!r}: {parsed.scheme}:// is not supported; use a "
                      f"local folder, file://, or one of "
                      f"{', '.join(sorted(f'{scheme}://' for scheme in OBJECT_SCHEMES))}.")
