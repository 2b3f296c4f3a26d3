"""The storage contract, on a local folder and on a real S3 server (moto's, on 127.0.0.1).

Whole or nothing, read back streaming, list, conditional create and replace, and a failure in
the middle of a write leaving the previous object; then the errors a user can cause.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest

from pigment_audit_assets.core.errors import ConfigError, StorageError
from pigment_audit_assets.core.storage import (
    UPLOAD_PART_BYTES,
    LocalStorage,
    ObjectStorage,
    Storage,
    storage_from_url,
)
from pigment_audit_assets_tests.conftest import s3_client

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
