"""A local stand-in for Pigment's Audit Logs API and Import API: a real HTTP server on 127.0.0.1.

It follows what Pigment documents (see /work/shared/pigment-api.md) and makes the undocumented or
hard cases reproducible: pages newest-first by ingestion time, a cursor that stays stable while
events arrive, a clock that decides which events are visible yet, the 180-day lookback, imports
that complete asynchronously, the per-window request budget, the 300 imports per configuration
per hour, and injected faults (error statuses, connection resets, truncated bodies, slow answers,
malformed JSON).

Used by the project's tests and by its demo::

    with PigmentStandIn(page_size=100) as pigment:
        pigment.add_events(synthetic_events(date(2025, 9, 1), 1000))
        requests.get(pigment.base_url + "/api/audit/v1/events", ...)

or from a shell: ``python -m pigment_audit_assets_tests.stand_in --port 8787 --days 14``.

Only the standard library is used: no dagster, nothing from ``pigment_audit_assets``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import csv
import io
import json
import math
import random
import re
import secrets
import signal
import socket
import socketserver
import struct
import threading
import time
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

__all__ = ["FAULT_KINDS", "Fault", "ImportRecord", "PigmentStandIn", "RequestRecord", "main"]

UTC = timezone.utc
AUDIT_PATH = "/api/audit/v1/events"
PUSH_PATHS = ("/api/v1/import/push/csv", "/api/import/push/csv")
STATUS_PATH = re.compile(r"^/api/v1/import/([^/]+)/status$")
LOOKBACK = timedelta(days=180)
IMPORTS_PER_HOUR = 300
FAULT_KINDS: tuple[str, ...] = ("status", "reset", "truncate", "slow", "malformed_json")
ENDPOINTS: tuple[str, ...] = ("audit", "push", "status")
CHAOS_STATUSES = (429, 500, 502, 503, 504)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JSON = "application/json; charset=utf-8"
# One encoder for every event: json.dumps would rebuild it each call. UTF-8 as Pigment sends it.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Fault:
    """A fault to apply to the next request of `endpoint` ("any" matches every endpoint).

    - "status": answer `status` with a small JSON body (and `Retry-After: retry_after` if set);
    - "reset": close the socket abruptly (RST), no response at all;
    - "truncate": send the real answer's headers, with its full Content-Length, but only the
      first half of its body, then close;
    - "slow": sleep `delay` seconds, then answer normally;
    - "malformed_json": answer 200 with a body that is not valid JSON.

    On push, "slow", "truncate" and "malformed_json" let the import be recorded: a 200 whose
    body is cut or garbled is the hard case where Pigment started the import but the client
    never learnt its id.
    """

    kind: Literal["status", "reset", "truncate", "slow", "malformed_json"]
    endpoint: Literal["audit", "push", "status", "any"] = "any"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.endpoint not in (*ENDPOINTS, "any"):
            raise ValueError(f"unknown endpoint {self.endpoint!r}")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the stand-in saw it; `status` is None when the connection was reset."""

    endpoint: str  # "audit", "push", "status" or "other" (unknown path, bad framing)
    method: str
    path_with_query: str
    status: int | None
    at: datetime  # real wall-clock time (not the stand-in's clock), to measure back-off


@dataclass(frozen=True)
class ImportRecord:
    """A CSV push that Pigment accepted (answered, or would have answered, 200)."""

    import_id: str
    configuration_id: str
    body: bytes
    content_type: str
    created_at: datetime
    final_status: Literal["Completed", "Failed"]
    inserted_count: int = 0
    errors: tuple[tuple[str, str], ...] = ()  # (name, description) when final_status is Failed
    skipped_count: int = 0  # rows Pigment skipped, with skipped_reason, in a Completed import
    skipped_reason: str = ""


class _Stored(NamedTuple):
    """An event as served: sorted by (ingestion µs, id, arrival sequence)."""

    ts: int  # ingestionTimestamp, microseconds since the epoch
    id: str
    seq: int  # breaks ties between copies of one event, so a cursor never skips a duplicate
    payload: bytes  # the event's JSON, serialised once (bytes take far less memory than dicts)
    happened: int | None  # eventTimestamp in µs; None if the event is not well-formed


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = _JSON


class _BadRequestFraming(Exception):
    """The request body's framing (Content-Length, chunks) cannot be trusted."""


def _sort_key(entry: _Stored) -> tuple[int, str, int]:
    return entry.ts, entry.id, entry.seq


def _ts_key(entry: _Stored) -> int:
    return entry.ts


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _iso(moment: datetime) -> str:
    millis = moment.microsecond // 1000
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(UTC)


def _parse_timestamp(text: str) -> datetime:
    """Parse a date or ISO-8601 timestamp; a date means its midnight UTC, no offset means UTC."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty timestamp")
    # Python 3.10's fromisoformat does not accept a trailing "Z".
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return _Response(status, body, headers)


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    return _json_response(status, {"status": status, "message": message}, headers)


def _one(query: dict[str, list[str]], *names: str) -> str | None:
    for name in names:
        if name in query:
            return query[name][-1]
    return None


def _encode_cursor(entry: _Stored, since_us: int) -> str:
    raw = json.dumps({"t": entry.ts, "i": entry.id, "s": entry.seq, "q": since_us})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[tuple[int, str, int], int]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
        key = (int(value["t"]), str(value["i"]), int(value["s"]))
        return key, int(value["q"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise ValueError("invalid cursor") from exc


def _count_csv_records(body: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    """Data records in a CSV body (header excluded; quoted newlines stay inside a record)."""
    try:
        reader = csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""), strict=True)
        rows = sum(1 for row in reader if row)
    except (UnicodeDecodeError, csv.Error) as exc:
        return 0, (("InvalidFile", f"The file could not be read as CSV: {exc}"),)
    return max(rows - 1, 0), ()


class PigmentStandIn:
    """A local Pigment: Audit Logs API, CSV push and import status, over real HTTP/1.1.

    Start it with :meth:`start` (or as a context manager), then point a client at
    :attr:`base_url`. All state is guarded by one lock: tests may add events, move the clock or
    inject faults while requests are in flight.

    Behaviour where Pigment's documentation is silent, chosen to keep clients honest:

    - ``ingestedSince`` is required on a first page; a date means midnight UTC, a timestamp
      without an offset means UTC. With a ``cursor``, the cursor's own ingestedSince applies and
      the query's is ignored.
    - A cursor encodes the sort key of the last event served, so events added between pages
      never shift a scan (no skips, no repeats). Newest-first, events ingested after the scan
      began are not returned by it; oldest-first, they are, at the end.
    - ``hasMoreEvents`` is always present; clients should not depend on it.
    - Push accepts any content type except ``multipart/*`` (the community script sends
      ``application/csv``); its records are counted with the csv module (insertedCount).
    - The request budget runs on real (monotonic) time, so a client can wait it out; the 300
      imports per hour and all timestamps follow the stand-in's clock.
    - A push that faults with "truncate" or "malformed_json" IS recorded: Pigment started the
      import (the status line says 200) but the answer was lost, so a client that retries pushes
      the same rows twice. "status" and "reset" record nothing; "slow" records it normally.
    - ``request_counts`` counts every request routed to a known endpoint, including those
      refused by the budget, by auth or by a fault.
    """

    def __init__(
        self,
        *,
        audit_key: str = "test-audit-key",
        import_key: str = "test-import-key",
        configuration_ids: Iterable[str] = ("00000000-0000-4000-8000-000000000001",),
        page_size: int = 1000,
        order: Literal["newest", "oldest"] = "newest",
        now: datetime | None = None,
        status_polls_in_progress: int = 1,
        max_push_bytes: int = 500 * 1024**2,
        cursor_on_last_page: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if order not in ("newest", "oldest"):
            raise ValueError("order must be 'newest' or 'oldest'")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.audit_key = audit_key
        self.import_key = import_key
        self.configuration_ids = frozenset(configuration_ids)
        self.page_size = page_size
        self.order = order
        self.status_polls_in_progress = status_polls_in_progress
        self.max_push_bytes = max_push_bytes
        self.cursor_on_last_page = cursor_on_last_page
        self.host = host
        self.port = port
        self.base_url = ""

        self.request_counts: Counter[str] = Counter()
        self.requests_log: list[RequestRecord] = []
        self.imports: list[ImportRecord] = []
        # Cleared by a test to hold pushes that arrive (counted in push_arrivals) until set.
        self.push_gate = threading.Event()
        self.push_gate.set()
        self.push_arrivals = 0

        self._lock = threading.RLock()
        self._now = None if now is None else _aware(now, "now")
        self._entries: list[_Stored] = []
        self._seq = count()
        self._faults: deque[Fault] = deque()
        self._chaos_rate = 0.0
        self._chaos_rng = random.Random(0)
        self._chaos_kinds: tuple[str, ...] = FAULT_KINDS
        self._chaos_endpoints: tuple[str, ...] = ENDPOINTS
        self._chaos_delay = 0.2
        self._budget: int | None = None
        self._budget_window = 300.0
        self._budget_retry_after = False
        self._window_start: float | None = None
        self._window_used = 0
        self._fail_imports = 0
        self._partial_imports: list[tuple[int, int, str]] = []  # (skipped, unreported, reason)
        self._imports_by_id: dict[str, ImportRecord] = {}
        self._polls: Counter[str] = Counter()
        self._completed_at: dict[str, datetime] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PigmentStandIn:
        """Bind and serve in a daemon thread; `base_url` is set once this returns."""
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"pigment-stand-in-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PigmentStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- data and clock --------------------------------------------------------------------

    def add_events(self, events: Iterable[Any]) -> None:
        """Add events to serve.

        Each item is either an event dict with an ISO-8601 "ingestionTimestamp", or a pair
        ``(raw_json_value, ingestion_datetime)`` for malformed events (not an object, no id, no
        eventTimestamp...), served as-is at that ingestion time. Adding the same id twice serves
        two copies, as Pigment sometimes does.
        """
        new: list[_Stored] = []
        for item in events:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], datetime):
                value, ts = item[0], _to_us(_aware(item[1], "ingestion time"))
            elif isinstance(item, dict):
                if "ingestionTimestamp" not in item:
                    raise ValueError("an event dict needs an ingestionTimestamp; use a pair")
                value, ts = item, _to_us(_parse_timestamp(item["ingestionTimestamp"]))
            else:
                raise TypeError("events are dicts or (raw_value, ingestion_datetime) pairs")
            raw_id = value.get("id") if isinstance(value, dict) else None
            event_id = raw_id if isinstance(raw_id, str) else "" if raw_id is None else repr(raw_id)
            happened = None
            if isinstance(raw_id, str) and raw_id:
                with contextlib.suppress(TypeError, ValueError):
                    happened = _to_us(_parse_timestamp(value.get("eventTimestamp")))
            try:
                payload = _ENCODER.encode(value).encode()
            except UnicodeEncodeError:  # a lone surrogate: sent as JSON's \uXXXX escape
                payload = json.dumps(value, separators=(",", ":")).encode()
            new.append(_Stored(ts, event_id, next(self._seq), payload, happened))
        with self._lock:
            # Timsort merges the two sorted runs in about linear time.
            self._entries.extend(sorted(new, key=_sort_key))
            self._entries.sort(key=_sort_key)

    def now(self) -> datetime:
        """The stand-in's clock: the fixed time if one is set, else the real UTC time."""
        with self._lock:
            return self._now if self._now is not None else datetime.now(UTC)

    def set_now(self, now: datetime) -> None:
        """Fix the clock at `now` (timezone-aware); events ingested after it are invisible."""
        with self._lock:
            self._now = _aware(now, "now")

    def advance(self, delta: timedelta) -> None:
        """Move the clock by `delta` (from the real time if no clock was set, fixing it)."""
        with self._lock:
            self._now = self.now() + delta

    def visible_events(self, *, event_day: date | None = None, tz: str = "UTC") -> list[dict]:
        """The truth a correct client should end with.

        Well-formed (a dict with a string id and a parseable eventTimestamp) events ingested at
        or before the clock, de-duplicated by id, in ingestion order; with `event_day`, only those
        whose eventTimestamp falls on that day in zone `tz`.
        """
        low = high = None
        if event_day is not None:
            zone = ZoneInfo(tz)
            low = _to_us(datetime.combine(event_day, datetime.min.time(), tzinfo=zone))
            high = _to_us(datetime.combine(event_day + timedelta(days=1), datetime.min.time(),
                                           tzinfo=zone))
        now_us = _to_us(self.now())
        with self._lock:
            entries = self._entries[: bisect_right(self._entries, now_us, key=_ts_key)]
        seen: set[str] = set()
        result: list[dict] = []
        for entry in entries:
            if entry.happened is None or entry.id in seen:
                continue
            seen.add(entry.id)
            if low is None or low <= entry.happened < high:  # type: ignore[operator]
                result.append(json.loads(entry.payload))
        return result

    # -- faults and limits -----------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies once, to the next request its endpoint matches, in order."""
        with self._lock:
            self._faults.extend(faults)

    def chaos(
        self,
        *,
        rate: float,
        seed: int,
        kinds: Sequence[str] = FAULT_KINDS,
        endpoints: Sequence[str] = ENDPOINTS,
        slow_delay: float = 0.2,
    ) -> None:
        """Fault a random `rate` of requests (seeded RNG); `rate=0` turns chaos off.

        Status faults pick among 429/500/502/503/504; slow ones wait `slow_delay` seconds.
        Injected faults take precedence over chaos.
        """
        if unknown := set(kinds) - set(FAULT_KINDS):
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        with self._lock:
            self._chaos_rate = rate
            self._chaos_rng = random.Random(seed)
            self._chaos_kinds = tuple(kinds)
            self._chaos_endpoints = tuple(endpoints)
            self._chaos_delay = slow_delay

    def set_budget(
        self, requests: int | None, window_seconds: float = 300.0, retry_after: bool = False
    ) -> None:
        """Allow `requests` per window across all endpoints (None: unlimited), like Pigment's
        500 per 5 minutes per IP; past it, 429 until the window resets. With `retry_after`, the
        429 carries Retry-After: the seconds until the reset, rounded up. Starts a new window.
        """
        with self._lock:
            self._budget = requests
            self._budget_window = window_seconds
            self._budget_retry_after = retry_after
            self._window_start = None
            self._window_used = 0

    def fail_next_imports(self, count: int = 1) -> None:
        """Make the next `count` accepted pushes end with importStatus "Failed"."""
        with self._lock:
            self._fail_imports += count

    def complete_next_import_partly(self, *, skipped: int = 0, unreported: int = 0,
                                    reason: str = "Invalid value") -> None:
        """The next accepted push completes with ``skipped`` rows skipped (reported, with
        ``reason``) and ``unreported`` rows neither taken nor reported: a short report."""
        with self._lock:
            self._partial_imports.append((skipped, unreported, reason))

    # -- observation -----------------------------------------------------------------------

    def pushed_rows(self) -> list[dict[str, str]]:
        """All data rows of all recorded imports, in push order, read with csv.DictReader."""
        with self._lock:
            bodies = [record.body for record in self.imports]
        rows: list[dict[str, str]] = []
        for body in bodies:
            text = body.decode("utf-8-sig", errors="replace")
            rows.extend(csv.DictReader(io.StringIO(text, newline="")))
        return rows

    def reset_counters(self) -> None:
        """Clear `request_counts` and `requests_log` (imports and events stay)."""
        with self._lock:
            self.request_counts.clear()
            self.requests_log.clear()

    # -- request processing (called by the handler threads) --------------------------------

    def _log(self, endpoint: str, method: str, path: str, status: int | None) -> None:
        with self._lock:
            self.requests_log.append(
                RequestRecord(endpoint, method, path, status, datetime.now(UTC))
            )

    def _admit(self, endpoint: str) -> _Response | None:
        """Count the request and apply the request budget: a 429 to send, or None."""
        with self._lock:
            self.request_counts[endpoint] += 1
            if self._budget is None:
                return None
            # Real time, not the stand-in's clock: a client waits for the window in real time.
            moment = time.monotonic()
            if self._window_start is None or moment - self._window_start >= self._budget_window:
                self._window_start, self._window_used = moment, 0
            if self._window_used < self._budget:
                self._window_used += 1
                return None
            wait = self._window_start + self._budget_window - moment
            with_header = self._budget_retry_after
        headers = (("Retry-After", str(max(1, math.ceil(wait)))),) if with_header else ()
        return _error(429, "Too many requests: the request budget for this window is spent",
                      headers)

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.endpoint in ("any", endpoint):
                    del self._faults[index]
                    return fault
            rng = self._chaos_rng
            if (self._chaos_rate > 0 and endpoint in self._chaos_endpoints
                    and rng.random() < self._chaos_rate):
                return Fault(kind=rng.choice(self._chaos_kinds),  # type: ignore[arg-type]
                             status=rng.choice(CHAOS_STATUSES), delay=self._chaos_delay)
        return None

    def _respond(
        self, endpoint: str, match: str, query_string: str, headers: Any, body: bytes, size: int
    ) -> _Response:
        """The normal answer of an endpoint, with its side effects (recording imports...)."""
        expected = self.audit_key if endpoint == "audit" else self.import_key
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            return _error(401, "Unauthorized: missing or invalid API key")
        query = parse_qs(query_string, keep_blank_values=True)
        if endpoint == "audit":
            return self._audit(query)
        if endpoint == "push":
            return self._push(query, headers.get("Content-Type") or "", body, size)
        return self._status(match, query)

    def _audit(self, query: dict[str, list[str]]) -> _Response:
        now = self.now()
        cursor = _one(query, "cursor")
        key: tuple[int, str, int] | None = None
        if cursor:
            try:
                key, since_us = _decode_cursor(cursor)
            except ValueError:
                return _error(400, "Invalid cursor")
        else:
            since_text = _one(query, "ingestedSince")
            if since_text is None:
                return _error(400, "ingestedSince is required")
            try:
                since = _parse_timestamp(since_text)
            except ValueError:
                return _error(400, f"Invalid ingestedSince {since_text!r}: expected a date "
                                   "(YYYY-MM-DD) or an ISO-8601 timestamp")
            if since < now - LOOKBACK:
                return _error(400, "ingestedSince is too far in the past: the maximum lookback "
                                   "period for each query is 180 days prior to the date of query")
            since_us = _to_us(since)
        with self._lock:
            entries = self._entries
            low = bisect_left(entries, since_us, key=_ts_key)
            high = bisect_right(entries, _to_us(now), key=_ts_key)
            if self.order == "newest":
                if key is not None:  # continue strictly below the last key served
                    high = min(high, bisect_left(entries, key, key=_sort_key))
                start = max(low, high - self.page_size)
                page = entries[start:high][::-1]
                more = start > low
            else:
                if key is not None:  # continue strictly above the last key served
                    low = max(low, bisect_right(entries, key, key=_sort_key))
                end = max(low, min(high, low + self.page_size))
                page = entries[low:end]
                more = end < high
        parts = [b'{"events":[', b",".join(entry.payload for entry in page), b"]"]
        if page and (more or self.cursor_on_last_page):
            parts.append(b',"nextEventsCursor":"' + _encode_cursor(page[-1], since_us).encode()
                         + b'"')
        parts.append(b',"hasMoreEvents":' + (b"true" if more else b"false") + b"}")
        return _Response(200, b"".join(parts))

    def _push(
        self, query: dict[str, list[str]], content_type: str, body: bytes, size: int
    ) -> _Response:
        configuration_id = _one(query, "configurationId", "configurationID")
        if not configuration_id:
            return _error(400, "configurationId is required")
        if configuration_id not in self.configuration_ids:
            return _error(404, "Import configuration not found")
        if content_type.lower().startswith("multipart/"):
            return _error(400, "Bad request: send the raw CSV bytes, not multipart")
        if size == 0:
            return _error(400, "Bad request: the body is empty")
        if size > self.max_push_bytes:
            return _error(400, "Bad request or size limit exceeded")
        with self._lock:
            self.push_arrivals += 1
        self.push_gate.wait(timeout=120)
        inserted, errors = _count_csv_records(body)
        now = self.now()
        with self._lock:
            recent = sum(1 for record in self.imports if record.configuration_id ==
                         configuration_id and record.created_at > now - timedelta(hours=1))
            if recent >= IMPORTS_PER_HOUR:
                return _error(429, "Maximum number of reports per configuration per hour "
                                   f"exceeded, maximum: {IMPORTS_PER_HOUR}")
            if self._fail_imports > 0 and not errors:
                self._fail_imports -= 1
                errors = (("ImportFailed", "The import failed (injected by the stand-in)"),)
            skipped, unreported, reason = ((0, 0, "") if errors or not self._partial_imports
                                           else self._partial_imports.pop(0))
            record = ImportRecord(
                import_id=str(uuid.uuid4()), configuration_id=configuration_id, body=body,
                content_type=content_type, created_at=now,
                final_status="Failed" if errors else "Completed",
                inserted_count=0 if errors else max(0, inserted - skipped - unreported),
                errors=errors, skipped_count=skipped, skipped_reason=reason,
            )
            self.imports.append(record)
            self._imports_by_id[record.import_id] = record
        return _json_response(200, {"importId": record.import_id})

    def _status(self, import_id: str, query: dict[str, list[str]]) -> _Response:
        with self._lock:
            record = self._imports_by_id.get(import_id)
            if record is None:
                return _error(404, "Status with the specified importId was not found")
            self._polls[import_id] += 1
            in_progress = self._polls[import_id] <= self.status_polls_in_progress
            if not in_progress:
                completed = self._completed_at.setdefault(
                    import_id, max(self.now(), record.created_at))
        answer: dict[str, Any] = {"importId": import_id, "createdAt": _iso(record.created_at)}
        if in_progress:
            answer["importStatus"] = "InProgress"
            return _json_response(200, answer)
        answer["completedAt"] = _iso(completed)
        answer["importStatus"] = record.final_status
        if record.final_status == "Failed":
            answer["errorsDetails"] = [{"name": n, "description": d} for n, d in record.errors]
        elif (_one(query, "includedDetailedReport") or "").lower() == "true":
            block_id = str(uuid.uuid5(uuid.NAMESPACE_URL, record.configuration_id))
            counts = {"insertedCount": record.inserted_count, "updatedCount": 0,
                      "deletedCount": 0}
            skipped = ([{"count": record.skipped_count, "reason": record.skipped_reason,
                         "samples": []}] if record.skipped_count else [])
            answer["detailedReport"] = {
                "blockType": "List",
                "summary": {**counts, "skippedCount": record.skipped_count},
                "impactedBlocks": [{"blockId": block_id, **counts, "skippedData": skipped}],
            }
        return _json_response(200, answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], stand_in: PigmentStandIn) -> None:
        self.stand_in = stand_in
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing: reads bodies, routes, applies faults; the stand-in decides the answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections as with Pigment
    server_version = "PigmentStandIn/1.0"
    timeout = 60  # idle keep-alive connections end instead of holding a thread forever
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle plus the client's
        # delayed ACK would add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests_log is the record; stderr noise would only clutter test output

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        stand_in = self.server.stand_in
        split = urlsplit(self.path)
        endpoint, allowed, match = "other", "", ""
        if split.path == AUDIT_PATH:
            endpoint, allowed = "audit", "GET"
        elif split.path in PUSH_PATHS:
            endpoint, allowed = "push", "POST"
        elif found := STATUS_PATH.match(split.path):
            endpoint, allowed, match = "status", "GET", found.group(1)

        # Read the whole body first, whatever happens next, so the connection stays in sync.
        limit = stand_in.max_push_bytes if endpoint == "push" else 1024**2
        try:
            body, size = self._read_body(limit)
        except _BadRequestFraming as exc:
            self.close_connection = True
            self._finish("other", method, _error(400, f"Bad request framing: {exc}"))
            return
        if endpoint == "other":
            self._finish(endpoint, method, _error(404, "Not found"))
            return
        if method != allowed:
            self._finish("other", method, _Response(
                405, json.dumps({"status": 405, "message": "Method not allowed"}).encode(),
                (("Allow", allowed),)))
            return

        refused = stand_in._admit(endpoint)
        if refused is not None:
            self._finish(endpoint, method, refused)
            return
        fault = stand_in._take_fault(endpoint)
        if fault is not None and fault.kind == "reset":
            stand_in._log(endpoint, method, self.path, None)  # first: the client moves on at once
            self._reset()
            return
        if fault is not None and fault.kind == "status":
            headers = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
            self._finish(endpoint, method, _error(fault.status, "Injected fault", headers))
            return
        if fault is not None and fault.kind == "malformed_json":
            if endpoint == "push":
                # A 200 to a push means "Import started": the import happens, the id is lost.
                stand_in._respond(endpoint, match, split.query, self.headers, body, size)
            # Like a proxy's half-written answer: JSON content type, not JSON.
            self._finish(endpoint, method, _Response(200, b'{"events": [{"id": "oops"'))
            return
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        response = stand_in._respond(endpoint, match, split.query, self.headers, body, size)
        self._finish(endpoint, method, response,
                     truncate=fault is not None and fault.kind == "truncate")

    def _finish(self, endpoint: str, method: str, response: _Response, *,
                truncate: bool = False) -> None:
        # Log first: the client may move on (or may have given up) before the write completes.
        self.server.stand_in._log(endpoint, method, self.path, response.status)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if truncate:
                # Full Content-Length, half the body, then close: the client sees a short read.
                self.wfile.write(response.body[: len(response.body) // 2])
                self.close_connection = True
            else:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client timed out and left (e.g. a "slow" fault)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.rfile.close()  # drop makefile's reference, or close() would not close the socket
        self.connection.close()

    def _read_body(self, limit: int) -> tuple[bytes, int]:
        """The request body (at most `limit` bytes kept) and its full size."""
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding:
            if encoding != "chunked":
                raise _BadRequestFraming(f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b"", 0
        if not length_text.strip().isdigit():
            raise _BadRequestFraming("invalid Content-Length")
        kept = bytearray()
        size = remaining = int(length_text)
        while remaining:
            block = self.rfile.read(min(remaining, 1024**2))
            if not block:
                raise _BadRequestFraming("body shorter than Content-Length")
            remaining -= len(block)
            if len(kept) + len(block) <= limit:
                kept += block
        return bytes(kept), size

    def _read_chunked(self, limit: int) -> tuple[bytes, int]:
        kept, size = bytearray(), 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequestFraming("invalid chunk size line") from None
            if chunk == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, ignored
                return bytes(kept), size
            remaining = chunk
            while remaining:
                block = self.rfile.read(min(remaining, 1024**2))
                if not block:
                    raise _BadRequestFraming("body ended inside a chunk")
                remaining -= len(block)
                size += len(block)
                if len(kept) + len(block) <= limit:
                    kept += block
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadRequestFraming("missing CRLF after a chunk")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve synthetic events for the last N days until SIGINT or SIGTERM (for the demo)."""
    from pigment_audit_assets_tests.synthetic import iter_synthetic_events

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--days", type=int, default=14, help="days of events, up to today (UTC)")
    parser.add_argument("--events-per-day", type=int, default=2000)
    parser.add_argument("--late-fraction", type=float, default=0.02)
    parser.add_argument("--tz", default="UTC", help="zone in which the generated days are laid")
    parser.add_argument("--audit-key", default="demo-audit-key")
    parser.add_argument("--import-key", default="demo-import-key")
    parser.add_argument("--configuration-id", action="append", dest="configuration_ids",
                        help="accepted import configuration (repeatable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--order", choices=("newest", "oldest"), default="newest")
    parser.add_argument("--status-polls-in-progress", type=int, default=1)
    parser.add_argument("--budget", type=int, default=None,
                        help="requests per 300 s window (default: unlimited)")
    parser.add_argument("--chaos-rate", type=float, default=0.0)
    args = parser.parse_args(argv)

    stand_in = PigmentStandIn(
        audit_key=args.audit_key, import_key=args.import_key,
        configuration_ids=args.configuration_ids or ("00000000-0000-4000-8000-000000000001",),
        page_size=args.page_size, order=args.order,
        status_polls_in_progress=args.status_polls_in_progress, host=args.host, port=args.port,
    )
    # Events of today (and late ones) are ingested in the future: they appear as time passes.
    today = datetime.now(UTC).date()
    total = 0
    for back in range(args.days - 1, -1, -1):
        events = list(iter_synthetic_events(
            today - timedelta(days=back), args.events_per_day, tz=args.tz, seed=args.seed,
            late_fraction=args.late_fraction))
        stand_in.add_events(events)
        total += len(events)
    if args.budget is not None:
        stand_in.set_budget(args.budget, retry_after=False)
    if args.chaos_rate:
        stand_in.chaos(rate=args.chaos_rate, seed=args.seed)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with stand_in:
        print(f"Pigment stand-in ready at {stand_in.base_url} ({total} events)", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
