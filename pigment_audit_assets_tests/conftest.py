"""Shared fixtures: a running Pigment stand-in, a storage root, a configured resource."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from pigment_audit_assets.core.client import PigmentClient, RequestPacer, RetryPolicy
from pigment_audit_assets.defs.assets import build_assets
from pigment_audit_assets_tests.stand_in import PigmentStandIn

AUDIT_KEY = "test-audit-key-5f1c9e"
IMPORT_KEY = "test-import-key-8a27d4"
CONFIGURATION_ID = "00000000-0000-4000-8000-000000000001"
# Days relative to today, so the 180-day lookback never ages the tests out.
TODAY = datetime.now(timezone.utc).date()
DAY = TODAY - timedelta(days=10)
STAND_IN_NOW = datetime.combine(TODAY - timedelta(days=2), time(12), tzinfo=timezone.utc)
log = logging.getLogger("pigment_audit_tests")
# The project's three assets over daily partitions that start 60 days ago.
PARTITIONS = dg.DailyPartitionsDefinition(start_date=(TODAY - timedelta(days=60)).isoformat(),
                                          end_offset=0)
ASSETS = build_assets(PARTITIONS)


@pytest.fixture(autouse=True)
def scratch(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own scratch folder (``PIGMENT_AUDIT_SCRATCH_DIR``), so tests can look in it;
    and no cloud SDK default that could reach past loopback (the instance metadata service)."""
    folder = tmp_path_factory.mktemp("scratch")
    monkeypatch.setenv("PIGMENT_AUDIT_SCRATCH_DIR", str(folder))
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return folder


def days_before(day: date, count: int) -> list[date]:
    """``count`` consecutive days ending with ``day``."""
    return [day - timedelta(days=offset) for offset in range(count - 1, -1, -1)]


@pytest.fixture
def stand_in() -> Iterator[PigmentStandIn]:
    """A stand-in with small pages (so scans span many), its clock two days before today."""
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100,
                        now=STAND_IN_NOW) as server:
        yield server


def make_client(stand_in: PigmentStandIn, **overrides: Any) -> PigmentClient:
    """A client of the stand-in with short patience and its own pacer."""
    settings: dict[str, Any] = {
        "audit_key": AUDIT_KEY, "import_key": IMPORT_KEY, "timeout_seconds": 5.0,
        "retry": RetryPolicy(patience_seconds=20, min_backoff_seconds=0.01,
                             max_backoff_seconds=0.2),
        "pacer": RequestPacer(10_000, 1.0), "log": log,
    }
    settings.update(overrides)
    return PigmentClient(stand_in.base_url, **settings)


def resource_settings(stand_in: PigmentStandIn, root: Path, **overrides: Any) -> dict[str, Any]:
    """PigmentResource fields for the stand-in and a storage root (small chunks, fast polls)."""
    settings: dict[str, Any] = {
        "audit_api_key": AUDIT_KEY, "import_api_key": IMPORT_KEY,
        "import_configuration_id": CONFIGURATION_ID, "base_url": stand_in.base_url,
        "storage_url": str(root), "chunk_size_mb": 0.05, "import_poll_seconds": 0.05,
        "retry_patience_seconds": 30.0, "timeout_seconds": 5.0,
        "retry_min_backoff_seconds": 0.01, "retry_max_backoff_seconds": 0.2,
        # A pace of its own size: the default 500 per 5 minutes is shared by the whole process.
        "requests_per_window": 100_000, "window_seconds": 1.0,
    }
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server on 127.0.0.1 (moto's server), for the whole session."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY":
                  "test-secret-key-3c9e1a", "AWS_REGION": "us-east-1"}


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
           request: pytest.FixtureRequest) -> str:
    """``s3://<a new bucket>/audit`` on the moto server, with the standard AWS variables set."""
    import boto3

    for name, value in {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)
    return f"s3://{bucket}/audit"


def s3_client(endpoint: str) -> Any:
    """A boto3 client of the test server, to look at what the project stored (tests only)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"])
