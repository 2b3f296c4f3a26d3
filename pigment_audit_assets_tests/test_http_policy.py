"""The client's one HTTP policy, against the stand-in over real HTTP on 127.0.0.1.

Retryable faults are retried and recovered with the same request (same cursor); 400, 401, 403
and 404 fail at once with a message that says what to check; Retry-After is honoured; a pacer
keeps every call of a process within its window. Waits are measured loosely, never tightly.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pigment_audit_assets.core.client import PigmentClient, RequestPacer, RetryPolicy
from pigment_audit_assets.core.errors import PigmentApiError, PigmentUnavailableError
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    IMPORT_KEY,
    log,
    make_client,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

SINCE = datetime.combine(DAY, datetime.min.time(), tzinfo=timezone.utc)


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def audit_cursors(stand_in: PigmentStandIn) -> list[str | None]:
    """The cursor of every audit request the stand-in saw, in order (None on the first page)."""
    cursors: list[str | None] = []
    for record in stand_in.requests_log:
        if record.endpoint == "audit":
            query = parse_qs(urlsplit(record.path_with_query).query)
            cursors.append(query.get("cursor", [None])[-1])
    return cursors


def scan_ids(client: PigmentClient) -> list[str]:
    return [event["id"] for page in client.iter_audit_pages(SINCE) for event in page]


def write_csv_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "chunk.csv"
    path.write_text("id,eventType\r\n" + "".join(f"e{index},X\r\n" for index in range(rows)),
                    encoding="utf-8")
    return path


@pytest.fixture
def filled(stand_in: PigmentStandIn) -> PigmentStandIn:
    stand_in.add_events(synthetic_events(DAY, 350, seed=11))  # pages of 100: 4 pages
    return stand_in


RETRYABLE = [
    pytest.param(Fault("status", "audit", status=status), id=f"status-{status}")
    for status in (429, 500, 502, 503, 504)
] + [
    pytest.param(Fault("reset", "audit"), id="reset"),
    pytest.param(Fault("truncate", "audit"), id="truncate"),
    pytest.param(Fault("malformed_json", "audit"), id="malformed_json"),
]


@pytest.mark.parametrize("fault", RETRYABLE)
def test_a_retryable_fault_on_a_later_page_repeats_that_page(filled: PigmentStandIn,
                                                             fault: Fault) -> None:
    clean = make_client(filled)
    truth = scan_ids(clean)
    assert len(truth) == 350
    filled.reset_counters()
    # Two good pages, then the fault hits page 3 (a cursor page) twice in a row.
    filled.inject(Fault("slow", "audit"), Fault("slow", "audit"), fault, fault)
    client = make_client(filled)
    assert scan_ids(client) == truth  # nothing skipped, nothing doubled, same order
    cursors = audit_cursors(filled)
    assert len(cursors) == 4 + 2
    assert cursors[2] is not None and cursors[2] == cursors[3] == cursors[4]  # same cursor
    assert len(set(cursors)) == 4
    assert client.request_counts["audit"] == 6


def test_a_slow_answer_past_the_timeout_is_retried(filled: PigmentStandIn) -> None:
    filled.inject(Fault("slow", "audit", delay=1.5))
    client = make_client(filled, timeout_seconds=0.5)
    assert len(scan_ids(client)) == 350
    assert client.request_counts["audit"] == 5
    assert filled.request_counts["audit"] == 5
    # The first page was asked twice; the stand-in logs the slow one when it finally answers.
    deadline = time.monotonic() + 5
    while len(cursors := audit_cursors(filled)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the stand-in's log with a deadline
    assert cursors.count(None) == 2 and len(set(cursors)) == 4


@pytest.mark.parametrize("fault", [
    Fault("status", "push", status=503), Fault("reset", "push"),
    Fault("status", "push", status=429, retry_after="0"),
], ids=["503", "reset", "429"])
def test_push_and_status_faults_are_retried(stand_in: PigmentStandIn, tmp_path: Path,
                                            fault: Fault) -> None:
    client = make_client(stand_in)
    import_id = client.push_csv(CONFIGURATION_ID, write_csv_file(tmp_path, 3))
    stand_in.inject(fault, Fault("status", "status", status=502), Fault("reset", "status"),
                    Fault("truncate", "status"))
    second = client.push_csv(CONFIGURATION_ID, write_csv_file(tmp_path, 5))
    assert [record.import_id for record in stand_in.imports] == [import_id, second]
    status = client.wait_for_import(second, poll_seconds=0.01, timeout_seconds=10)
    assert status["importStatus"] == "Completed"
    assert status["detailedReport"]["summary"]["insertedCount"] == 5
    assert client.request_counts["push"] == 3  # one retry of the second push
    assert client.request_counts["status"] >= 4  # three faults, then the real answers


@pytest.mark.parametrize("kind", ["truncate", "malformed_json"])
def test_a_push_whose_answer_is_cut_short_is_not_pushed_again(stand_in: PigmentStandIn,
                                                             tmp_path: Path, kind: str) -> None:
    """HTTP 200 came back ("Import started"), the body was cut or garbled: no second import."""
    from pigment_audit_assets.core.errors import PushAnswerLostError

    stand_in.inject(Fault(kind, "push"))
    client = make_client(stand_in)
    with pytest.raises(PushAnswerLostError) as caught:
        client.push_csv(CONFIGURATION_ID, write_csv_file(tmp_path, 4))
    assert len(stand_in.imports) == 1 and stand_in.request_counts["push"] == 1
    assert "200" in str(caught.value)


def _waits(stand_in: PigmentStandIn) -> list[float]:
    times = [record.at for record in stand_in.requests_log if record.endpoint == "audit"]
    return [(later - earlier).total_seconds() for earlier, later in pairwise(times)]


def test_retry_after_in_seconds_is_honoured(filled: PigmentStandIn) -> None:
    filled.inject(Fault("status", "audit", status=429, retry_after="1"))
    client = make_client(filled)  # its own back-off would wait at most 0.2 s
    started = time.monotonic()
    assert len(scan_ids(client)) == 350
    assert _waits(filled)[0] >= 0.9
    assert time.monotonic() - started < 15


def test_retry_after_as_an_http_date_is_honoured(filled: PigmentStandIn) -> None:
    # An HTTP date has whole seconds: 2.5 s ahead rounds down to between 1.5 and 2.5 s.
    when = datetime.now(timezone.utc) + timedelta(seconds=2.5)
    filled.inject(Fault("status", "audit", status=503, retry_after=format_datetime(when, True)))
    client = make_client(filled)
    assert len(scan_ids(client)) == 350
    assert _waits(filled)[0] >= 1.0
    assert client.request_counts["audit"] == 5


def test_without_retry_after_the_back_off_grows(filled: PigmentStandIn) -> None:
    filled.inject(*[Fault("status", "audit", status=503)] * 4)
    retry = RetryPolicy(patience_seconds=20, min_backoff_seconds=0.1, max_backoff_seconds=5)
    client = make_client(filled, retry=retry)
    assert len(scan_ids(client)) == 350
    waits = _waits(filled)[:4]
    # Exponential with jitter in [ceiling/2, ceiling]: 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8 s.
    assert waits[3] >= 0.4 and sum(waits) >= 0.75
    assert waits[3] > waits[0]


def test_the_default_patience_outlasts_the_rate_limit_window() -> None:
    from pigment_audit_assets.defs.resources import PigmentResource

    assert RetryPolicy().patience_seconds >= 360
    assert PigmentResource().retry_patience_seconds >= 360
    client = PigmentClient("https://pigment.app", audit_key="a")
    assert client.retry.patience_seconds >= 360
    assert (client.pacer.limit, client.pacer.window_seconds) == (500, 300)


def test_patience_exhausted_raises_unavailable(filled: PigmentStandIn) -> None:
    filled.chaos(rate=1.0, seed=1, kinds=["status"], endpoints=["audit"])
    retry = RetryPolicy(patience_seconds=0.6, min_backoff_seconds=0.05, max_backoff_seconds=0.1)
    client = make_client(filled, retry=retry)
    started = time.monotonic()
    with pytest.raises(PigmentUnavailableError) as caught:
        scan_ids(client)
    assert time.monotonic() - started < 10
    assert "HTTP 5" in str(caught.value) or "HTTP 429" in str(caught.value)
    assert "patience" in str(caught.value)
    assert client.request_counts["audit"] >= 3
    assert AUDIT_KEY not in str(caught.value)


def test_a_retry_after_beyond_the_patience_gives_up_without_waiting(
        filled: PigmentStandIn) -> None:
    filled.inject(Fault("status", "audit", status=429, retry_after="3600"))
    started = time.monotonic()
    with pytest.raises(PigmentUnavailableError):
        scan_ids(make_client(filled))
    assert time.monotonic() - started < 5
    assert filled.request_counts["audit"] == 1


NOT_RETRYABLE: list[Any] = [
    pytest.param("audit", 400, [], id="audit-400"),
    pytest.param("audit", 401, ["PIGMENT_AUDIT_API_KEY", "Security Admin"], id="audit-401"),
    pytest.param("audit", 403, ["PIGMENT_AUDIT_API_KEY", "Security Admin"], id="audit-403"),
    pytest.param("audit", 404, [], id="audit-404"),
    # "Injected fault" is the stand-in's body: what Pigment said is quoted.
    pytest.param("push", 400, ["chunk size", "Injected fault"], id="push-400"),
    pytest.param("push", 401, ["PIGMENT_IMPORT_API_KEY", "Workspace Admin"], id="push-401"),
    pytest.param("push", 403, ["PIGMENT_IMPORT_API_KEY", "Workspace Admin"], id="push-403"),
    pytest.param("push", 404, ["PIGMENT_IMPORT_CONFIGURATION_ID", CONFIGURATION_ID],
                 id="push-404"),
    pytest.param("status", 401, ["PIGMENT_IMPORT_API_KEY"], id="status-401"),
    pytest.param("status", 404, ["import"], id="status-404"),
]


@pytest.mark.parametrize(("endpoint", "status", "needles"), NOT_RETRYABLE)
def test_non_retryable_statuses_fail_at_once(stand_in: PigmentStandIn, tmp_path: Path,
                                             endpoint: str, status: int,
                                             needles: list[str]) -> None:
    stand_in.inject(Fault("status", endpoint, status=status))  # type: ignore[arg-type]
    client = make_client(stand_in)
    started = time.monotonic()
    with pytest.raises(PigmentApiError) as caught:
        if endpoint == "audit":
            scan_ids(client)
        elif endpoint == "push":
            client.push_csv(CONFIGURATION_ID, write_csv_file(tmp_path, 2))
        else:
            client.import_status("0000-unknown")
    assert time.monotonic() - started < 2
    assert stand_in.request_counts[endpoint] == 1  # one request, no retry
    assert caught.value.status == status
    message = str(caught.value)
    assert str(status) in message
    for needle in needles:
        assert needle in message
    assert AUDIT_KEY not in message and IMPORT_KEY not in message


def test_a_wrong_key_names_the_variable_without_the_key(stand_in: PigmentStandIn) -> None:
    client = make_client(stand_in, audit_key="wrong-" + AUDIT_KEY)
    with pytest.raises(PigmentApiError) as caught:
        scan_ids(client)
    assert "PIGMENT_AUDIT_API_KEY" in str(caught.value) and AUDIT_KEY not in str(caught.value)
    assert stand_in.request_counts["audit"] == 1
    assert AUDIT_KEY not in repr(client) and IMPORT_KEY not in repr(client)


def test_the_pacer_keeps_every_call_within_the_window() -> None:
    clock = FakeClock()
    pacer = RequestPacer(5, 10.0, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for _ in range(23):
        pacer.acquire()
        sent.append(clock())
    for index, moment in enumerate(sent):
        assert sum(1 for other in sent[index:] if other < moment + 10.0) <= 5
    assert sent[4] == sent[0] and sent[5] >= sent[0] + 10.0  # the sixth waits for the window
    assert clock.now - 1000.0 >= 40.0  # 23 requests at 5 per 10 s need 4 full windows
    assert pacer.waited_seconds == pytest.approx(sum(clock.sleeps))


def test_one_pacer_covers_audit_push_and_status(filled: PigmentStandIn, tmp_path: Path) -> None:
    """A process's audit, push and status calls share one pace, checked with a fake clock."""
    clock = FakeClock()
    acquired: list[float] = []

    class Recording(RequestPacer):
        def acquire(self) -> None:
            super().acquire()
            acquired.append(self._clock())

    pacer = Recording(3, 60.0, clock=clock, sleep=clock.sleep)
    audit = make_client(filled, pacer=pacer)
    push = make_client(filled, pacer=pacer)
    assert len(scan_ids(audit)) == 350  # 4 requests
    import_id = push.push_csv(CONFIGURATION_ID, write_csv_file(tmp_path, 2))  # 1
    push.import_status(import_id)  # 1
    push.import_status(import_id)  # 1
    assert sum(filled.request_counts.values()) == len(acquired) == 7
    for index, moment in enumerate(acquired):
        assert sum(1 for other in acquired[index:] if other < moment + 60.0) <= 3
    assert clock.now - 1000.0 >= 120.0  # 7 requests at 3 per minute: two full waits


def test_a_netrc_login_does_not_replace_the_key(filled: PigmentStandIn, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # requests would send a ~/.netrc login for the host instead of the Bearer key.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert len(scan_ids(make_client(filled))) == 350


def test_proxies_come_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corporate-ca.pem")
    client = PigmentClient("https://pigment.app", audit_key=AUDIT_KEY)
    assert client._session.proxies.get("https") == "http://proxy.invalid:3128"
    assert client._session.verify == "/etc/corporate-ca.pem"
    monkeypatch.setenv("NO_PROXY", "pigment.app")
    assert not PigmentClient("https://pigment.app", audit_key=AUDIT_KEY)._session.proxies


def test_a_wrong_api_host_is_named_as_the_thing_to_fix(stand_in: PigmentStandIn) -> None:
    """A path after the host (404 on the audit), or a host that answers nothing: before, the
    first was 'Pigment answered 404 to a audit request', the second only 'try again later'."""
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with_path = PigmentClient(stand_in.base_url + "/api", audit_key=AUDIT_KEY, log=log,
                              retry=RetryPolicy(patience_seconds=2, min_backoff_seconds=0.01,
                                                max_backoff_seconds=0.05))
    with pytest.raises(PigmentApiError) as wrong_path:
        next(iter(with_path.iter_audit_pages(since)))
    assert "PIGMENT_BASE_URL" in str(wrong_path.value) and "(404)" in str(wrong_path.value)
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nobody = PigmentClient(f"http://127.0.0.1:{port}", audit_key=AUDIT_KEY, log=log,
                           retry=RetryPolicy(patience_seconds=0.5, min_backoff_seconds=0.01,
                                             max_backoff_seconds=0.05))
    with pytest.raises(PigmentUnavailableError) as unreached:
        next(iter(nobody.iter_audit_pages(since)))
    assert f"If http://127.0.0.1:{port} is not Pigment's API" in str(unreached.value)
    assert "PIGMENT_BASE_URL" in str(unreached.value)
