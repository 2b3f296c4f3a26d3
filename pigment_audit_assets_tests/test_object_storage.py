"""The assets with their files on S3 (moto's server on 127.0.0.1), against the stand-in.

Two days materialized and held against the stand-in's truth, metadata with the objects' URIs,
the import record on S3 after each accepted chunk (a run on another "pod" resumes from it),
scratch removed after each step, and a bad bucket failing the run before any Pigment request.
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import orjson

from pigment_audit_assets.core.storage import storage_from_url
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    DAY,
    IMPORT_KEY,
    S3_ENVIRONMENT,
    resource_settings,
    s3_client,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_assets import by_partition, run


def _csv_ids(data: bytes) -> list[str]:
    return [row["id"] for row in csv.DictReader(io.StringIO(data.decode(), newline=""))]


def materialize_two_days_exactly(stand_in: PigmentStandIn, url: str, tmp_path: Path,
                                 scratch: Path) -> list[date]:
    """Materialize two days with storage at ``url`` and hold every file, the metadata's URIs,
    the pushes and the leases against the stand-in's truth; the days."""
    days = [DAY - timedelta(days=1), DAY]
    for day in [*days, DAY + timedelta(days=1)]:
        stand_in.add_events(synthetic_events(day, 120, seed=day.toordinal()))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, storage_url=url))
    result = run(resource, first=days[0].isoformat(), last=days[1].isoformat())
    assert result.success
    storage = storage_from_url(url)
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    for day in days:
        truth = sorted(event["id"] for event in stand_in.visible_events(event_day=day))
        assert truth  # each day has events to hold the files against
        raw = storage.read_bytes(storage.raw_key(day)) or b""
        raw_ids = [orjson.loads(line)["id"] for line in raw.splitlines()]
        assert sorted(raw_ids) == truth
        assert _csv_ids(storage.read_bytes(storage.csv_key(day)) or b"") == raw_ids
        record = orjson.loads(storage.read_bytes(storage.import_record_key(day)) or b"{}")
        assert sorted(i for entry in record["imports"] for i in entry["eventIds"]) == truth
        assert by_partition(result, "raw_audit_events")[day.isoformat()]["path"] == \
            f"{url}/raw/{day.isoformat()}.jsonl"
        assert by_partition(result, "audit_events_csv")[day.isoformat()]["path"] == \
            f"{url}/csv/{day.isoformat()}.csv"
        assert by_partition(result, "audit_events_import")[day.isoformat()][
            "import_record"] == f"{url}/imports/{day.isoformat()}.json"
    assert sorted(pushed) == sorted(
        event["id"] for day in days for event in stand_in.visible_events(event_day=day))
    assert len(pushed) == len(set(pushed))  # every event pushed once
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert not Path(tmp_path / "pigment_audit_data").exists()  # nothing written locally
    assert list(scratch.iterdir()) == []  # every step removed its scratch
    assert storage.list("leases/") == []  # the day's lease was given back
    return days


def test_two_days_on_s3_are_exact(stand_in: PigmentStandIn, s3_url: str, tmp_path: Path,
                                  scratch: Path) -> None:
    materialize_two_days_exactly(stand_in, s3_url, tmp_path, scratch)


def test_a_run_killed_after_some_chunks_resumes_elsewhere_from_the_record_on_s3(
        stand_in: PigmentStandIn, s3_url: str, tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 400, seed=77))
    settings = resource_settings(stand_in, tmp_path, storage_url=s3_url, chunk_size_mb=0.02)
    assert run(PigmentResource(**settings), day=DAY.isoformat()).success is True
    storage = storage_from_url(s3_url)
    record = orjson.loads(storage.read_bytes(storage.import_record_key(DAY)) or b"{}")
    chunks = len(record["imports"])
    assert chunks > 3
    # Pretend the run died after its second accepted chunk: keep only those in the record,
    # as the record on S3 was after that chunk, and drop what Pigment received after them.
    record["imports"] = record["imports"][:2]
    storage.write_bytes(storage.import_record_key(DAY), orjson.dumps(record))
    kept = {i for entry in record["imports"] for i in entry["eventIds"]}
    stand_in.imports[:] = stand_in.imports[:2]
    # Another "pod": a fresh scratch folder, nothing local, the same bucket.
    stand_in.inject(Fault("status", endpoint="audit", status=500))  # a retried hiccup
    result = run(PigmentResource(**settings), day=DAY.isoformat())
    assert result.success
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    assert sorted(pushed) == sorted(e["id"] for e in stand_in.visible_events(event_day=DAY))
    assert len(pushed) == len(set(pushed))  # the first two chunks were not pushed again
    assert kept <= set(pushed)


def test_a_missing_bucket_fails_the_run_before_any_pigment_request(
        stand_in: PigmentStandIn, s3_url: str, tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 10, seed=5))
    resource = PigmentResource(**resource_settings(
        stand_in, tmp_path, storage_url="s3://bucket-that-is-not-there/audit"))
    result = run(resource, day=DAY.isoformat(), raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.is_step_failure)
    error, message = failure.step_failure_data.error, ""  # type: ignore[union-attr]
    while error is not None:  # Dagster's wrapper, then the project's StorageError
        message, error = message + error.message, error.cause
    assert "bucket-that-is-not-there" in message and "PIGMENT_AUDIT_STORAGE_URL" in message
    assert failure.step_key == "raw_audit_events"
    assert sum(stand_in.request_counts.values()) == 0


def test_no_key_or_storage_secret_in_logs_metadata_or_objects(
        stand_in: PigmentStandIn, s3_url: str, s3_endpoint: str, tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 80, seed=12))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, storage_url=s3_url))
    with dg.DagsterInstance.ephemeral() as instance:
        assert run(resource, day=DAY.isoformat(), instance=instance).success
        bad = PigmentResource(**resource_settings(stand_in, tmp_path,
                                                  storage_url="s3://missing-bucket-x1/audit"))
        failed = run(bad, day=DAY.isoformat(), instance=instance, raise_on_error=False)
        assert not failed.success
        text = "\n".join(str(entry) for run_record in instance.get_runs()
                         for entry in instance.all_logs(run_record.run_id))
    client = s3_client(s3_endpoint)
    bucket = s3_url.split("/")[2]
    objects = b"".join(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                       for item in client.list_objects_v2(Bucket=bucket)["Contents"])
    for secret in (S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"], AUDIT_KEY, IMPORT_KEY):
        assert secret not in text and secret.encode() not in objects
        assert secret not in repr(resource)
    assert "missing-bucket-x1" in text  # the failure itself is in the logs, naming the bucket
