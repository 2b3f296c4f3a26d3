"""The storage contract, on a local folder and on a real S3 server (moto's, on 127.0.0.1).

Whole or nothing, read back streaming, list, conditional create and replace, and a failure in
the middle of a write leaving the previous object; then the errors a user can cause.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pigment_audit_assets.core import collect
from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.errors import ConfigError, StorageError
from pigment_audit_assets.core.imports import push_day
from pigment_audit_assets.core.storage import (
    UPLOAD_PART_BYTES,
    LocalStorage,
    ObjectStorage,
    Storage,
    naming_scratch,
    storage_from_url,
)
from pigment_audit_assets_tests.conftest import (
    CONFIGURATION_ID,
    S3_ENVIRONMENT,
    STAND_IN_NOW,
    make_client,
    s3_client,
)
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

DAY = date(2026, 11, 20)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same contract, run against both backends."""
    if request.param == "local":
        return storage_from_url(str(tmp_path / "data"))
    return storage_from_url(request.getfixturevalue("s3_url"))


def test_the_backend_follows_the_url(storage: Storage) -> None:
    assert isinstance(storage, LocalStorage if "://" not in storage.url else ObjectStorage)
    key = storage.raw_key(DAY)
    assert storage.uri(key).endswith("raw/2026-11-20.jsonl")
    if isinstance(storage, ObjectStorage):
        assert storage.uri(key) == f"{storage.url}/raw/2026-11-20.jsonl"


def test_write_then_read_back_list_and_delete(storage: Storage) -> None:
    storage.check_access()
    assert not storage.exists("raw/a.jsonl") and storage.read_bytes("raw/a.jsonl") is None
    with pytest.raises(FileNotFoundError), storage.open_read("raw/a.jsonl"):
        pass
    storage.write_bytes("raw/a.jsonl", b'{"id": "1"}\n')
    storage.write_bytes("raw/b.jsonl", b"")
    storage.write_bytes("csv/a.csv", b"id\r\n1\r\n")
    assert storage.exists("raw/a.jsonl") and storage.size("raw/a.jsonl") == 12
    assert storage.read_bytes("raw/b.jsonl") == b""
    assert storage.list("raw/") == ["raw/a.jsonl", "raw/b.jsonl"]
    assert storage.list("imports/") == []
    storage.delete("raw/a.jsonl")
    storage.delete("raw/a.jsonl")  # absent: nothing happens
    assert storage.list("raw") == ["raw/b.jsonl"]


def test_a_large_object_streams_back_in_order(storage: Storage) -> None:
    # Larger than one upload part, so S3 takes a multipart upload.
    block = bytes(range(256)) * 4096  # 1 MiB
    size = UPLOAD_PART_BYTES * 2 + 12345
    with storage.writer("csv/big.csv") as handle:
        written = 0
        while written < size:
            part = block[: min(len(block), size - written)]
            handle.write(part)
            written += len(part)
    assert storage.size("csv/big.csv") == size
    with storage.open_read("csv/big.csv") as handle:
        first = handle.read(1000)
        lines = sum(1 for _ in handle)  # iterating a reader streams it
    assert first == block[:1000] and lines > 0
    assert storage.digest("csv/big.csv") == storage.digest("csv/big.csv")


def test_a_failure_in_the_middle_of_a_write_leaves_the_previous_object(
        storage: Storage, request: pytest.FixtureRequest) -> None:
    storage.write_bytes("csv/day.csv", b"previous\r\n")
    with pytest.raises(RuntimeError, match="crash"), storage.writer("csv/day.csv") as handle:
        handle.write(b"x" * (UPLOAD_PART_BYTES + 1))
        raise RuntimeError("crash")
    assert storage.read_bytes("csv/day.csv") == b"previous\r\n"
    with pytest.raises(RuntimeError), storage.writer("csv/new.csv") as handle:
        handle.write(b"half")
        raise RuntimeError("crash")
    assert not storage.exists("csv/new.csv")
    if isinstance(storage, ObjectStorage):  # no multipart upload left behind either
        client = s3_client(request.getfixturevalue("s3_endpoint"))
        assert not client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")
    else:
        assert sorted(os.listdir(Path(storage.url) / "csv")) == ["day.csv"]


def test_conditional_create_and_replace(storage: Storage) -> None:
    key = storage.lease_key(DAY)
    assert storage.create(key, b"first")
    assert not storage.create(key, b"second")
    data, version = storage.read_versioned(key) or (b"", "")
    assert data == b"first"
    assert storage.replace(key, b"third", version)
    assert not storage.replace(key, b"fourth", version)  # stale version: nothing written
    assert storage.read_bytes(key) == b"third"
    storage.delete(key)
    assert storage.read_versioned(key) is None
    assert storage.create(key, b"again")


def test_a_missing_bucket_is_named(s3_url: str) -> None:
    bucket = "no-such-bucket-7f3a"
    storage = storage_from_url(f"s3://{bucket}/audit")
    with pytest.raises(StorageError, match=rf"PIGMENT_AUDIT_STORAGE_URL.*{bucket}.*does not "
                                           r"exist"):
        storage.check_access()


def test_missing_credentials_are_named(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        storage_from_url(s3_url).check_access()


# An S3 refusal as obstore words it (from SeaweedFS): the probe's random name and the store's
# request id hold digits that may spell a status code by chance.
_DENIED = ("The operation lacked the necessary privileges to complete for path "
           "7249ea3b87da/.access-probe-5649{chance}e71e: Error performing PUT "
           "http://127.0.0.1:60375/pigment-audit/7249ea3b87da/.access-probe-5649{chance}e71e in "
           "1.15ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>"
           "<Error><Code>AccessDenied</Code><RequestId>18EF1C3C{chance}0896A691</RequestId>"
           "</Error>")


@pytest.mark.parametrize(("text", "hint"), [
    (_DENIED.format(chance="401"), "access to the bucket 'bucket' is denied"),
    (_DENIED.format(chance="d1"), "access to the bucket 'bucket' is denied"),
    ("Error performing PUT http://store/bucket/p - Server returned non-2xx status code: "
     "401 Unauthorized", "the credentials are missing or wrong"),
    ("Error performing PUT http://store/bucket/p-403 - Server returned non-2xx status code: "
     "500 Internal Server Error", "the store did not answer as expected"),
])
def test_a_refused_probe_is_named_by_its_status_line_not_by_digits_by_chance(
        text: str, hint: str, s3_url: str) -> None:
    storage = storage_from_url("s3://bucket/audit")  # in s3_url's environment (keys, region)
    assert storage._access_hint(text).startswith(hint)  # type: ignore[attr-defined]


def test_urls_that_name_no_bucket_or_an_unknown_scheme_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"PIGMENT_AUDIT_STORAGE_URL.*no bucket"):
        storage_from_url("s3:///audit")
    with pytest.raises(ConfigError, match=r"PIGMENT_AUDIT_STORAGE_URL.*hdfs://"):
        storage_from_url("hdfs://cluster/audit")


def test_a_read_only_folder_is_named(tmp_path: Path) -> None:
    # A file where the folder should be: as real a refusal as a read-only mount, also as root.
    (tmp_path / "data").write_bytes(b"")
    storage = storage_from_url(str(tmp_path / "data"))
    with pytest.raises(StorageError, match=r"PIGMENT_AUDIT_STORAGE_URL.*data"):
        storage.check_access()
    with pytest.raises(StorageError, match=r"raw/2026-11-20.jsonl.*PIGMENT_AUDIT_STORAGE_URL"):
        storage.write_bytes(storage.raw_key(DAY), b"{}\n")


def test_an_error_of_the_callers_own_code_passes_unchanged(storage: Storage) -> None:
    """An OSError the caller raises inside ``open_read`` or ``writer`` (its own scratch disk
    full, say) comes out as it was, not as a storage error pointing at the bucket; a missing
    object is still a FileNotFoundError."""
    storage.write_bytes("raw/a.jsonl", b'{"id": "1"}\n')
    own = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/scratch/push/chunk-000001.csv")
    with pytest.raises(OSError) as raised, storage.open_read("raw/a.jsonl") as handle:
        assert handle.read() == b'{"id": "1"}\n'
        raise own
    assert raised.value is own and type(raised.value) is OSError
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as raised, storage.writer("raw/b.jsonl") as handle:
        handle.write(b"half")
        raise own
    assert raised.value is own and type(raised.value) is OSError
    assert not storage.exists("raw/b.jsonl")  # and nothing written
    with pytest.raises(FileNotFoundError), storage.open_read("raw/missing.jsonl"):
        pass


class _CutShortS3(BaseHTTPRequestHandler):
    """An S3 GET that sends part of the object and drops the connection, then refuses the
    resumed GET (403): a read that fails in the middle of the object's stream."""

    protocol_version = "HTTP/1.1"
    size, sent = 2_000_000, 300_000

    def do_GET(self) -> None:
        if self.headers.get("Range"):  # obstore resuming after the cut
            body = b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.send_header("ETag", '"cut-short"')
        self.send_header("Last-Modified", "Fri, 20 Nov 2026 07:28:00 GMT")
        self.end_headers()
        self.wfile.write(b"x" * self.sent)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cut_short_s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``s3://bucket/audit`` on a :class:`_CutShortS3` server on 127.0.0.1."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutShortS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name, value in S3_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield "s3://bucket/audit"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_read_failing_midway_names_the_object_and_the_setting(cut_short_s3_url: str) -> None:
    storage = storage_from_url(cut_short_s3_url)
    with pytest.raises(StorageError, match=r"Could not read s3://bucket/audit/raw/2026-11-20"
                                           r"\.jsonl.*PIGMENT_AUDIT_STORAGE_URL"), \
            storage.open_read(storage.raw_key(DAY)) as handle:
        for _ in iter(lambda: handle.read(1 << 16), b""):
            pass


@pytest.fixture
def full_scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``PIGMENT_AUDIT_SCRATCH_DIR`` on a tmpfs of one page: a real full disk (ENOSPC)."""
    folder = tmp_path / "scratch-full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs to mount a tiny tmpfs (root, as on CI) to fill a disk for real: "
                    + mounted.stderr.decode(errors="replace").strip())
    monkeypatch.setenv("PIGMENT_AUDIT_SCRATCH_DIR", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def test_an_object_staged_on_a_full_scratch_disk_names_the_scratch_setting(
        s3_url: str, full_scratch: Path) -> None:
    """The object writer stages in scratch: its full disk names PIGMENT_AUDIT_SCRATCH_DIR,
    not the bucket, and the stored object stays as it was."""
    storage = storage_from_url(s3_url)
    with pytest.raises(StorageError, match=r"scratch.*No space left.*PIGMENT_AUDIT_SCRATCH_DIR"
                       ) as raised, storage.writer("csv/day.csv") as handle:
        handle.write(b"x" * (1 << 20))
    assert "PIGMENT_AUDIT_STORAGE_URL" not in str(raised.value)
    assert not storage.exists("csv/day.csv")


def test_a_push_on_a_full_scratch_disk_names_the_scratch_setting(
        s3_url: str, tmp_path: Path, full_scratch: Path, stand_in: PigmentStandIn,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV on S3 is pushed from chunk files in scratch: a full scratch disk there names
    PIGMENT_AUDIT_SCRATCH_DIR, not the bucket, and nothing is pushed or recorded."""
    storage = storage_from_url(s3_url)
    rows = b"".join(b"e%05d,Login,%s\r\n" % (number, b"x" * 40) for number in range(2000))
    monkeypatch.setenv("PIGMENT_AUDIT_SCRATCH_DIR", str(tmp_path / "roomy"))  # to upload it
    storage.write_bytes(storage.csv_key(DAY), b"id,eventType,note\r\n" + rows)
    monkeypatch.setenv("PIGMENT_AUDIT_SCRATCH_DIR", str(full_scratch))
    with pytest.raises(StorageError, match=r"scratch.*No space left.*PIGMENT_AUDIT_SCRATCH_DIR"
                       ) as raised:
        push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 50_000,
                 log=logging.getLogger(__name__), poll_seconds=0.01)
    assert "PIGMENT_AUDIT_STORAGE_URL" not in str(raised.value)
    assert stand_in.request_counts["push"] == 0
    assert not storage.exists(storage.import_record_key(DAY))


def test_a_scan_spilling_to_a_full_scratch_disk_names_the_scratch_setting(
        tmp_path: Path, full_scratch: Path, stand_in: PigmentStandIn,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's spool spills to SQLite in scratch past its memory budget: SQLite's "database
    or disk is full" there names PIGMENT_AUDIT_SCRATCH_DIR (for the assets and the command
    line alike), and no raw file is written."""
    stand_in.add_events(synthetic_events(DAY, 500, seed=3))
    monkeypatch.setattr(collect, "MEMORY_BUDGET", 1)  # spill at once
    storage = LocalStorage(tmp_path / "data")
    with pytest.raises(StorageError, match=r"scratch folder.*PIGMENT_AUDIT_SCRATCH_DIR"):
        collect.fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                           now=STAND_IN_NOW, log=logging.getLogger(__name__))
    assert not storage.raw_path(DAY).exists()


def test_sqlites_full_disk_in_scratch_names_the_scratch_setting(tmp_path: Path) -> None:
    """SQLite reports a full disk as its own error, not an OSError: named the same way; any
    other SQLite error passes through."""
    with pytest.raises(StorageError, match=r"database or disk is full.*PIGMENT_AUDIT_SCRATCH"), \
            naming_scratch(tmp_path, "keep the scan's events"):
        raise sqlite3.OperationalError("database or disk is full")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), \
            naming_scratch(tmp_path, "keep the scan's events"):
        raise sqlite3.OperationalError("no such table: spool")
