"""Edges found in review: keys with stray characters, the full retry patience, forgotten
imports, metric reports, answers of 200 that carry no import id."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import dagster as dg
import orjson
import pytest

from pigment_audit_assets.core.client import RetryPolicy
from pigment_audit_assets.core.errors import (
    ConfigError,
    PigmentUnavailableError,
    PushAnswerLostError,
)
from pigment_audit_assets.core.imports import ImportOutcome, push_day, save_record
from pigment_audit_assets.core.storage import LocalStorage, remove_stale_scratch
from pigment_audit_assets.core.table import write_csv
from pigment_audit_assets.defs import checks
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    make_client,
    resource_settings,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

log = logging.getLogger(__name__)


@pytest.mark.parametrize("key", [AUDIT_KEY + "\n", " " + AUDIT_KEY, "ab\x00cd"])
def test_a_key_with_stray_characters_is_refused_without_showing_it(
        stand_in: PigmentStandIn, tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_API_KEY has spaces") as caught:
        make_client(stand_in, audit_key=key)
    assert key.strip() not in str(caught.value)
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, audit_api_key=key))
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_API_KEY") as caught:
        resource.fetch_days([DAY], log)
    assert key.strip() not in str(caught.value)
    assert stand_in.request_counts["audit"] == 0


def test_the_retry_patience_is_spent_in_full(stand_in: PigmentStandIn) -> None:
    stand_in.inject(*[Fault("status", "audit", status=503)] * 200)
    client = make_client(stand_in, retry=RetryPolicy(patience_seconds=1.5,
                                                     min_backoff_seconds=0.4,
                                                     max_backoff_seconds=0.4))
    started = time.monotonic()
    with pytest.raises(PigmentUnavailableError, match="503"):
        next(client.iter_audit_pages(stand_in.now()))
    # The last attempt waits for the patience to run out rather than giving up early.
    assert time.monotonic() - started >= 1.5
    assert stand_in.request_counts["audit"] >= 4


def test_a_200_to_a_push_without_an_import_id_is_never_pushed_again(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    stand_in.inject(Fault("malformed_json", "push"))
    csv_path = tmp_path / "day.csv"
    csv_path.write_text("id,x\r\n1,a\r\n", encoding="utf-8")
    with pytest.raises(PushAnswerLostError, match="200"):
        make_client(stand_in).push_csv(CONFIGURATION_ID, csv_path)
    assert stand_in.request_counts["push"] == 1 and len(stand_in.imports) == 1


def test_an_import_pigment_forgot_is_recorded_not_fatal(stand_in: PigmentStandIn,
                                                       tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    events = synthetic_events(DAY, 6, seed=31)
    storage.raw_path(DAY).parent.mkdir(parents=True)
    storage.raw_path(DAY).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    write_csv([storage.raw_path(DAY)], storage.csv_path(DAY))
    # An earlier run pushed 2 events as an import Pigment no longer knows.
    save_record(storage, DAY, {"day": DAY.isoformat(), "imports": [
        {"importId": "forgotten-import", "configurationId": CONFIGURATION_ID, "chunk": 1,
         "rows": 2, "bytes": 10, "status": "Pushed",
         "eventIds": [events[0]["id"], events[1]["id"]]}]})
    outcome = push_day(make_client(stand_in), storage, DAY, CONFIGURATION_ID, 1 << 20,
                       poll_seconds=0.01, log=log)
    assert outcome.rows_pushed == 4 and outcome.already_pushed == 2
    record = orjson.loads(storage.import_record_path(DAY).read_bytes())
    assert [entry["status"] for entry in record["imports"]] == ["StatusUnknown", "Completed"]
    assert len(stand_in.pushed_rows()) == 4


def test_metric_reports_are_not_compared_to_rows(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    record = {"day": DAY.isoformat(), "imports": [
        {"importId": "metric", "configurationId": "c", "rows": 10, "eventIds": []}]}
    save_record(storage, DAY, record)
    outcome = ImportOutcome(day=DAY, record_path=storage.uri(storage.import_record_key(DAY)),
                            record=record, reports={
        "metric": {"blockType": "Metric", "insertedCount": 240, "updatedCount": 0,
                   "skippedCount": 0}})
    result = checks.check_import_reports(outcome)
    assert result.passed
    outcome.reports["metric"]["blockType"] = "List"
    assert not checks.check_import_reports(outcome).passed
    assert checks.check_import_reports(outcome).severity == dg.AssetCheckSeverity.ERROR


def test_stale_scratch_of_killed_runs_is_removed(tmp_path: Path, scratch: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    old_spool = scratch / "scan-123-dead" / "spool.sqlite"
    old_spool.parent.mkdir()
    old_spool.write_bytes(b"x")
    old_temp = tmp_path / "data" / "raw" / ".2025-09-01.jsonl.123.abcd.tmp"
    old_temp.parent.mkdir(parents=True)
    old_temp.write_bytes(b"half")
    fresh = scratch / "scan-456-running"
    fresh.mkdir()
    unsaved = scratch / "unsaved-imports"
    unsaved.mkdir()
    kept = tmp_path / "data" / "raw" / "2025-09-01.jsonl"
    kept.write_bytes(b"{}\n")
    long_ago = time.time() - 7 * 3600
    for path in (old_spool.parent, old_temp, kept, unsaved):
        os.utime(path, (long_ago, long_ago))
    assert remove_stale_scratch() == [old_spool.parent]
    assert storage.remove_stale_temporaries() == [old_temp]
    assert not old_spool.parent.exists() and not old_temp.exists()
    # A running step's folder, the journal of unsaved imports and the data stay.
    assert fresh.exists() and unsaved.exists() and kept.read_bytes() == b"{}\n"
