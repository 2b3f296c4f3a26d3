"""Tests of the Pigment stand-in itself, through a real HTTP client (requests)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import iter_synthetic_events, synthetic_events

UTC = timezone.utc
NOW = datetime(2025, 9, 10, 12, 0, tzinfo=UTC)
CONFIG = "00000000-0000-4000-8000-000000000001"
AUDIT = {"Authorization": "Bearer test-audit-key"}
IMPORT = {"Authorization": "Bearer test-import-key", "Content-Type": "text/csv"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pigment() -> Iterator[PigmentStandIn]:
    with PigmentStandIn(page_size=7, now=NOW) as stand_in:
        yield stand_in


def _event(event_id: str, ingested: datetime, happened: datetime | None = None) -> dict[str, Any]:
    def iso(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    return {"id": event_id, "eventType": "UserInvited", "eventTimestamp": iso(happened or ingested),
            "ingestionTimestamp": iso(ingested), "actor": {}, "context": {}, "payload": {}}


def _events_page(pigment: PigmentStandIn, **params: str) -> requests.Response:
    return requests.get(f"{pigment.base_url}/api/audit/v1/events", params=params, headers=AUDIT,
                        timeout=5)


def _scan(pigment: PigmentStandIn, since: str, on_page: Any = None) -> list[Any]:
    """Follow cursors until none comes back; `on_page(n)` runs after page n."""
    events: list[Any] = []
    params = {"ingestedSince": since}
    for page_number in range(1, 1000):
        answer = _events_page(pigment, **params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        events.extend(body["events"])
        if on_page is not None:
            on_page(page_number)
        if "nextEventsCursor" not in body:
            assert body["hasMoreEvents"] is False
            return events
        params["cursor"] = body["nextEventsCursor"]
    raise AssertionError("the scan never ended")


def _push(pigment: PigmentStandIn, body: Any, *, config: str = CONFIG,
          headers: dict[str, str] = IMPORT, param: str = "configurationId",
          path: str = "/api/v1/import/push/csv") -> requests.Response:
    return requests.post(f"{pigment.base_url}{path}?{param}={config}", data=body,
                         headers=headers, timeout=5)


def _status(pigment: PigmentStandIn, import_id: str) -> requests.Response:
    return requests.get(f"{pigment.base_url}/api/v1/import/{import_id}/status",
                        params={"includedDetailedReport": "true"}, headers=IMPORT, timeout=5)


def _wait_until_ok(send: Any, deadline_seconds: float = 5.0) -> requests.Response:
    """Poll until the server answers 200, within a bounded deadline (no blind sleeps)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        answer = send()
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


# -- audit pages ---------------------------------------------------------------------------


def test_pages_newest_first_with_cursors(pigment: PigmentStandIn) -> None:
    base = datetime(2025, 9, 1, tzinfo=UTC)
    # Several events share an ingestion time, so the id tie-break crosses page boundaries.
    events = [_event(f"e{i:02d}", base + timedelta(minutes=i // 3)) for i in range(30)]
    pigment.add_events(reversed(events))
    served = _scan(pigment, "2025-09-01")
    keys = [(e["ingestionTimestamp"], e["id"]) for e in served]
    assert keys == sorted(keys, reverse=True)
    assert sorted(e["id"] for e in served) == [e["id"] for e in events]
    assert pigment.request_counts["audit"] == 5  # ceil(30 / 7)


def test_pages_oldest_first_and_cursor_on_last_page() -> None:
    base = datetime(2025, 9, 1, tzinfo=UTC)
    events = [_event(f"e{i:02d}", base + timedelta(seconds=i)) for i in range(14)]
    with PigmentStandIn(page_size=7, now=NOW, order="oldest", cursor_on_last_page=True) as pigment:
        pigment.add_events(events)
        first = _events_page(pigment, ingestedSince="2025-09-01").json()
        second = _events_page(pigment, ingestedSince="2025-09-01",
                              cursor=first["nextEventsCursor"]).json()
        assert [e["id"] for e in first["events"] + second["events"]] == [e["id"] for e in events]
        # The last full page still carries a cursor; it leads to an empty page without one.
        assert second["hasMoreEvents"] is False and "nextEventsCursor" in second
        third = _events_page(pigment, ingestedSince="2025-09-01",
                             cursor=second["nextEventsCursor"]).json()
        assert third == {"events": [], "hasMoreEvents": False}


def test_cursor_is_stable_when_events_arrive_mid_scan(pigment: PigmentStandIn) -> None:
    base = datetime(2025, 9, 1, tzinfo=UTC)
    originals = [_event(f"old{i:02d}", base + timedelta(hours=i)) for i in range(20)]
    pigment.add_events(originals)

    def add_newer(page_number: int) -> None:
        # Newer events land above the cursor: an offset-based cursor would repeat events.
        pigment.add_events([_event(f"new{page_number}-{i}", base + timedelta(days=2, minutes=i))
                            for i in range(5)])

    served = [e["id"] for e in _scan(pigment, "2025-09-01", on_page=add_newer)]
    assert sorted(served) == sorted(e["id"] for e in originals)


def test_duplicates_are_served_twice_and_malformed_events_are_served(
    pigment: PigmentStandIn,
) -> None:
    moment = datetime(2025, 9, 2, tzinfo=UTC)
    twin = _event("twin", moment)
    pigment.add_events([twin, twin, ("not an object", moment), ({"eventType": "NoId"}, moment)])
    served = _scan(pigment, "2025-09-02")
    assert [e for e in served if isinstance(e, dict) and e.get("id") == "twin"] == [twin, twin]
    assert "not an object" in served and {"eventType": "NoId"} in served
    assert pigment.visible_events() == [twin]


def test_clock_hides_events_until_they_are_ingested(pigment: PigmentStandIn) -> None:
    late = _event("late", NOW + timedelta(hours=3), happened=NOW - timedelta(hours=1))
    pigment.add_events([_event("now", NOW), late])
    assert [e["id"] for e in _scan(pigment, "2025-09-10")] == ["now"]
    pigment.advance(timedelta(hours=3))
    assert [e["id"] for e in _scan(pigment, "2025-09-10")] == ["late", "now"]
    assert [e["id"] for e in pigment.visible_events(event_day=date(2025, 9, 10))] == [
        "now", "late"]


def test_ingested_since_filter_and_errors(pigment: PigmentStandIn) -> None:
    pigment.add_events([_event("a", datetime(2025, 9, 1, 23, 59, tzinfo=UTC)),
                        _event("b", datetime(2025, 9, 2, 0, 0, tzinfo=UTC)),
                        _event("c", datetime(2025, 9, 2, 6, 0, tzinfo=UTC))])
    assert [e["id"] for e in _scan(pigment, "2025-09-02")] == ["c", "b"]
    assert [e["id"] for e in _scan(pigment, "2025-09-02T01:00:00Z")] == ["c"]
    assert [e["id"] for e in _scan(pigment, "2025-09-02T00:00:00+00:00")] == ["c", "b"]
    # A date in the lookback is fine; one day beyond 180 days is refused.
    assert _events_page(pigment, ingestedSince="2025-03-15").status_code == 200
    too_old = _events_page(pigment, ingestedSince="2025-03-13")
    assert too_old.status_code == 400 and "180" in too_old.json()["message"]
    for bad in ({"ingestedSince": "yesterday"}, {"ingestedSince": ""}, {},
                {"ingestedSince": "2025-09-02", "cursor": "!!not-a-cursor!!"}):
        answer = _events_page(pigment, **bad)
        assert answer.status_code == 400 and answer.json()["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Bearer test-import-key"},
                                     {"Authorization": "test-audit-key"}])
def test_audit_needs_the_audit_key(pigment: PigmentStandIn, headers: dict[str, str]) -> None:
    answer = requests.get(f"{pigment.base_url}/api/audit/v1/events",
                          params={"ingestedSince": "2025-09-01"}, headers=headers, timeout=5)
    assert answer.status_code == 401 and "message" in answer.json()


def test_unknown_path_is_404(pigment: PigmentStandIn) -> None:
    assert requests.get(f"{pigment.base_url}/api/audit/v2/events", timeout=5).status_code == 404


# -- push and status -----------------------------------------------------------------------

CSV_WITH_NEWLINES = (
    'id,name,comment\r\n1,"Doe, John","line one\nline two"\r\n'
    '2,"Zoë ""Z"" Müller","a\r\nb"\r\n3,日本,plain\r\n'
).encode()


def test_push_then_status_in_progress_then_completed(pigment: PigmentStandIn) -> None:
    answer = _push(pigment, CSV_WITH_NEWLINES)
    assert answer.status_code == 200
    import_id = answer.json()["importId"]
    first = _status(pigment, import_id).json()
    assert first["importStatus"] == "InProgress" and first["importId"] == import_id
    done = _status(pigment, import_id).json()
    assert done["importStatus"] == "Completed" and "completedAt" in done
    report = done["detailedReport"]
    assert report["summary"]["insertedCount"] == 3
    assert report["impactedBlocks"][0]["insertedCount"] == 3
    assert pigment.imports[0].body == CSV_WITH_NEWLINES
    assert [row["comment"] for row in pigment.pushed_rows()] == [
        "line one\nline two", "a\r\nb", "plain"]


def test_push_variants_and_errors(pigment: PigmentStandIn) -> None:
    # The community script's spelling: unversioned path, configurationID, application/csv.
    legacy = _push(pigment, b"a\n1\n", param="configurationID", path="/api/import/push/csv",
                   headers={**IMPORT, "Content-Type": "application/csv; charset=utf-8"})
    assert legacy.status_code == 200
    assert _push(pigment, b"a\n1\n", config="unknown-config").status_code == 404
    assert _push(pigment, b"").status_code == 400
    assert _push(pigment, b"a\n1\n", headers={"Authorization": "Bearer test-audit-key"}
                 ).status_code == 401
    assert _push(pigment, b"a\n1\n", headers={}).status_code == 401
    assert len(pigment.imports) == 1
    assert _status(pigment, "00000000-0000-0000-0000-000000000000").json()["message"] == (
        "Status with the specified importId was not found")


def test_push_size_limit() -> None:
    with PigmentStandIn(max_push_bytes=100) as pigment:
        assert _push(pigment, b"a\n" + b"1\n" * 49).status_code == 200  # exactly 100 bytes
        assert _push(pigment, b"a\n" + b"1\n" * 50).status_code == 400
        assert len(pigment.imports) == 1


def test_chunked_push_body(pigment: PigmentStandIn) -> None:
    # A generator body makes requests send Transfer-Encoding: chunked.
    def parts() -> Iterator[bytes]:
        for start in range(0, len(CSV_WITH_NEWLINES), 10):
            yield CSV_WITH_NEWLINES[start:start + 10]

    answer = _push(pigment, parts())
    assert answer.status_code == 200
    assert pigment.imports[0].body == CSV_WITH_NEWLINES
    _status(pigment, answer.json()["importId"])
    done = _status(pigment, answer.json()["importId"]).json()
    assert done["detailedReport"]["summary"]["insertedCount"] == 3


def test_failed_import(pigment: PigmentStandIn) -> None:
    pigment.fail_next_imports(1)
    failed_id = _push(pigment, CSV_WITH_NEWLINES).json()["importId"]
    ok_id = _push(pigment, CSV_WITH_NEWLINES).json()["importId"]
    _status(pigment, failed_id)
    failed = _status(pigment, failed_id).json()
    assert failed["importStatus"] == "Failed" and failed["errorsDetails"][0]["name"]
    assert "detailedReport" not in failed
    _status(pigment, ok_id)
    assert _status(pigment, ok_id).json()["importStatus"] == "Completed"


def test_300_imports_per_configuration_per_hour(pigment: PigmentStandIn) -> None:
    with requests.Session() as session:
        for _ in range(300):
            answer = session.post(f"{pigment.base_url}/api/v1/import/push/csv",
                                  params={"configurationId": CONFIG}, data=b"a\n1\n",
                                  headers=IMPORT, timeout=5)
            assert answer.status_code == 200
    refused = _push(pigment, b"a\n1\n")
    assert refused.status_code == 429 and "300" in refused.json()["message"]
    pigment.advance(timedelta(hours=1, seconds=1))
    assert _push(pigment, b"a\n1\n").status_code == 200


# -- faults --------------------------------------------------------------------------------


def test_status_fault_with_retry_after(pigment: PigmentStandIn) -> None:
    pigment.inject(Fault("status", status=503, retry_after="2"), Fault("status", status=429))
    first = _events_page(pigment, ingestedSince="2025-09-01")
    assert first.status_code == 503 and first.headers["Retry-After"] == "2"
    second = _events_page(pigment, ingestedSince="2025-09-01")
    assert second.status_code == 429 and "Retry-After" not in second.headers
    assert _events_page(pigment, ingestedSince="2025-09-01").status_code == 200
    assert pigment.request_counts["audit"] == 3


def test_reset_fault_raises_connection_error_and_records_no_import(
    pigment: PigmentStandIn,
) -> None:
    pigment.inject(Fault("reset", endpoint="audit"), Fault("reset", endpoint="push"))
    with pytest.raises(requests.ConnectionError):
        _events_page(pigment, ingestedSince="2025-09-01")
    with pytest.raises(requests.ConnectionError):
        _push(pigment, CSV_WITH_NEWLINES)
    assert pigment.imports == []
    assert [r.status for r in pigment.requests_log] == [None, None]
    assert _push(pigment, CSV_WITH_NEWLINES).status_code == 200


def test_truncate_fault_breaks_the_body_but_push_is_recorded(pigment: PigmentStandIn) -> None:
    pigment.add_events([_event("a", datetime(2025, 9, 1, tzinfo=UTC))])
    pigment.inject(Fault("truncate", endpoint="audit"), Fault("truncate", endpoint="push"))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        _events_page(pigment, ingestedSince="2025-09-01")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        _push(pigment, CSV_WITH_NEWLINES)
    assert len(pigment.imports) == 1  # the answer was lost, the import was not


def test_slow_and_malformed_json_faults(pigment: PigmentStandIn) -> None:
    pigment.inject(Fault("slow", endpoint="push", delay=0.3), Fault("malformed_json"))
    started = time.monotonic()
    assert _push(pigment, CSV_WITH_NEWLINES).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert len(pigment.imports) == 1
    malformed = _push(pigment, CSV_WITH_NEWLINES)
    assert malformed.status_code == 200
    with pytest.raises(ValueError):
        malformed.json()
    assert len(pigment.imports) == 2  # a 200 to a push: the import started, its id is lost


def test_faults_wait_for_their_endpoint(pigment: PigmentStandIn) -> None:
    pigment.inject(Fault("status", endpoint="status", status=502))
    assert _events_page(pigment, ingestedSince="2025-09-01").status_code == 200
    import_id = _push(pigment, b"a\n1\n").json()["importId"]
    assert _status(pigment, import_id).status_code == 502
    assert _status(pigment, import_id).json()["importStatus"] == "InProgress"


def test_chaos_is_seeded_and_can_be_turned_off(pigment: PigmentStandIn) -> None:
    def outcomes() -> list[int]:
        pigment.chaos(rate=0.5, seed=7, kinds=("status",), endpoints=("audit",))
        return [_events_page(pigment, ingestedSince="2025-09-01").status_code for _ in range(20)]

    first = outcomes()
    assert first == outcomes()
    assert 0 < first.count(200) < 20
    assert set(first) - {200} <= {429, 500, 502, 503, 504}
    pigment.chaos(rate=0, seed=7)
    assert all(_events_page(pigment, ingestedSince="2025-09-01").status_code == 200
               for _ in range(10))


@pytest.mark.parametrize("retry_after", [False, True])
def test_request_budget_and_recovery(pigment: PigmentStandIn, retry_after: bool) -> None:
    pigment.set_budget(3, window_seconds=0.5, retry_after=retry_after)
    statuses = [_events_page(pigment, ingestedSince="2025-09-01").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = _push(pigment, b"a\n1\n")  # the budget spans every endpoint
    assert refused.status_code == 429 and pigment.imports == []
    if retry_after:
        assert refused.headers["Retry-After"] == "1"  # 0.5 s left, rounded up
    else:
        assert "Retry-After" not in refused.headers
    recovered = _wait_until_ok(lambda: _events_page(pigment, ingestedSince="2025-09-01"))
    assert recovered.status_code == 200


# -- synthetic events ----------------------------------------------------------------------


def test_synthetic_events_are_deterministic() -> None:
    day = date(2025, 9, 1)
    events = synthetic_events(day, 500, seed=3, late_fraction=0.1)
    assert events == synthetic_events(day, 500, seed=3, late_fraction=0.1)
    assert events == list(iter_synthetic_events(day, 500, seed=3, late_fraction=0.1))
    assert events != synthetic_events(day, 500, seed=4, late_fraction=0.1)
    next_day = synthetic_events(day + timedelta(days=1), 500, seed=3)
    assert len({e["id"] for e in events + next_day}) == 1000
    assert synthetic_events(day, 3, id_prefix="x-")[0]["id"].startswith("x-")


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_synthetic_events_fall_on_their_day(tz: str) -> None:
    day = date(2025, 11, 2)  # a DST change in New York: a 25-hour day
    zone = ZoneInfo(tz)
    events = synthetic_events(day, 2000, tz=tz, seed=1, late_fraction=0.05)
    happened = [datetime.fromisoformat(e["eventTimestamp"].replace("Z", "+00:00"))
                for e in events]
    assert {moment.astimezone(zone).date() for moment in happened} == {day}
    local = sorted(moment.astimezone(zone) for moment in happened)
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    assert local[0] == start  # the first millisecond of the day
    assert end - local[-1] == timedelta(milliseconds=1)  # and the last one
    lateness = [datetime.fromisoformat(e["ingestionTimestamp"].replace("Z", "+00:00")) - moment
                for e, moment in zip(events, happened, strict=True)]
    assert all(timedelta(milliseconds=100) <= gap <= timedelta(days=2) for gap in lateness)
    late = sum(gap >= timedelta(hours=1) for gap in lateness)
    assert 0.02 * len(events) < late < 0.1 * len(events)


def test_synthetic_events_are_awkward_enough() -> None:
    events = synthetic_events(date(2025, 9, 1), 3000, seed=5)
    text = json.dumps(events, ensure_ascii=False)
    for needle in (",", '\\"', "\\n", "\\r\\n", "é", "ü", "日本", "🚀", "null", "true", "false"):
        assert needle in text, needle
    kinds = {e["eventType"] for e in events}
    assert {"UserInvited", "UserAccountTypeUpdated", "SnapshotTaken"} <= kinds
    lengths = {len(e["payload"]["applications"]) for e in events
               if e["eventType"] == "SnapshotTaken"}
    assert len(lengths) >= 3
    assert 300 < len(text.encode()) / len(events) < 1000


# -- the demo's command line ---------------------------------------------------------------


def test_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "pigment_audit_assets_tests.stand_in", "--port", "0",
               "--days", "2", "--events-per-day", "50", "--audit-key", "k"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("Pigment stand-in ready at http://127.0.0.1:")
            assert line.rstrip().endswith("(100 events)")
            base_url = line.split(" at ")[1].split()[0]
            answer = requests.get(f"{base_url}/api/audit/v1/events",
                                  params={"ingestedSince": str(date.today() - timedelta(days=3))},
                                  headers={"Authorization": "Bearer k"}, timeout=5)
            assert answer.status_code == 200 and answer.json()["events"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_pushed_rows_reads_every_import(pigment: PigmentStandIn) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([["k", "v"], ["1", "x,y"], ["2", 'say "hi"']])
    _push(pigment, buffer.getvalue().encode())
    _push(pigment, b"k,v\n3,z\n")
    assert [row["v"] for row in pigment.pushed_rows()] == ["x,y", 'say "hi"', "z"]
