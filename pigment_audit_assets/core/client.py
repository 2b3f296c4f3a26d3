"""The Pigment client: audit pages, CSV pushes, import status; one retry policy, one pacer.

Retries (tenacity) cover what a later attempt can fix: 429, 500, 502, 503, 504, connection
errors, time-outs, and bodies cut short or not JSON. ``Retry-After`` is honoured (seconds or an
HTTP date); without it the wait grows exponentially with jitter, and the default patience
(7 minutes) outlasts Pigment's 5-minute rate-limit window. A retry repeats the very same
request (same cursor), so no page is skipped or read twice. 400, 401, 403 and 404 fail at once
with a message that says what to check.

A push answered 200 ("Import started") whose body is then cut short is not retried: the import
exists, so :class:`PushAnswerLostError` tells the caller to record it rather than push twice.

Keys live only in request headers: they are never logged, never in an exception's text, never
in the client's repr.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson
import requests
import urllib3
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
)

from . import jsonio
from .chunks import Chunk
from .days import format_ingested_since
from .errors import (
    ConfigError,
    ImportFailedError,
    PigmentApiError,
    PigmentUnavailableError,
    PushAnswerLostError,
)

AUDIT_PATH = "/api/audit/v1/events"
PUSH_PATH = "/api/v1/import/push/csv"
STATUS_PATH = "/api/v1/import/{import_id}/status"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
FINAL_IMPORT_STATUSES = frozenset({"Completed", "Failed"})
_BROKEN = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
           requests.exceptions.ContentDecodingError)



def _read_body(response: requests.Response) -> bytes:
    """The whole body in one read (``response.content`` reads it 10 KB at a time), with
    urllib3's errors turned into the ones ``response.content`` raises."""
    try:
        return response.raw.read(decode_content=True)
    except urllib3.exceptions.ProtocolError as error:  # cut short, or a wrong length
        raise requests.exceptions.ChunkedEncodingError(error) from error
    except urllib3.exceptions.DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from error
    except urllib3.exceptions.ReadTimeoutError as error:
        raise requests.ConnectionError(error) from error
    except urllib3.exceptions.SSLError as error:
        raise requests.exceptions.SSLError(error) from error


AUDIT_KEY_VARIABLE = "PIGMENT_AUDIT_API_KEY"
IMPORT_KEY_VARIABLE = "PIGMENT_IMPORT_API_KEY"
KEY_VARIABLES = {"audit": AUDIT_KEY_VARIABLE, "import": IMPORT_KEY_VARIABLE}
_KEY_HELP = {
    "audit": (
        "it must be an 'Audit logs' API key, which a Security "
        "Admin creates under Workspace settings > API keys (Enterprise plan)."
    ),
    "import": (
        "it must be an 'Import or Export' API key, which a "
        "Workspace Admin creates under Workspace settings > API keys; it acts with its owner's "
        "rights, so the owner needs access to the import configuration's application."
    ),
}


class Log(Protocol):
    """What the client logs through: a ``logging.Logger`` or Dagster's ``context.log``."""

    def info(self, msg: str) -> Any: ...

    def warning(self, msg: str) -> Any: ...


class _Retryable(Exception):
    """A failure that a later attempt may not repeat."""

    def __init__(self, what: str, retry_after: float | None = None, *,
                 unreached: bool = False) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after
        self.unreached = unreached  # no answer at all: the host itself may be wrong


# What to check when the API host answers nothing, or 404 to the audit: both settings' names.
_HOST_HELP = ("check the API host, PIGMENT_BASE_URL (or the resource's base_url): Pigment's "
              "host, such as https://pigment.app, with no path")


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how the client keeps trying."""

    patience_seconds: float = 420.0
    min_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 120.0


class RequestPacer:
    """At most ``limit`` requests in any ``window`` seconds (a sliding window), thread-safe."""

    def __init__(self, limit: int, window_seconds: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if limit < 1 or window_seconds <= 0:
            raise ConfigError("the request pace needs a limit >= 1 and a window > 0 seconds.")
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self.waited_seconds = 0.0

    def acquire(self) -> None:
        """Block until one more request fits in the window, then count it."""
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0] >= self.window_seconds:
                    self._sent.popleft()
                if len(self._sent) < self.limit:
                    self._sent.append(now)
                    return
                wait = self.window_seconds - (now - self._sent[0])
            self.waited_seconds += wait
            self._sleep(wait)


_shared_pacers: dict[tuple[int, float], RequestPacer] = {}
_shared_lock = threading.Lock()


def shared_pacer(limit: int = 500, window_seconds: float = 300.0) -> RequestPacer:
    """The process-wide pacer for a pace, shared by every client of this process."""
    with _shared_lock:
        key = (limit, window_seconds)
        if key not in _shared_pacers:
            _shared_pacers[key] = RequestPacer(limit, window_seconds)
        return _shared_pacers[key]


def check_base_url(url: str) -> None:
    """A ConfigError naming PIGMENT_BASE_URL unless ``url`` is an http(s) URL with a host."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018  (a bad port or IPv6 host raises only when read)
    except ValueError as error:
        raise ConfigError(f"PIGMENT_BASE_URL={url!r} is not a valid URL ({error}); set it to "
                          "an http(s) URL such as https://pigment.app.") from None
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"PIGMENT_BASE_URL={url!r} is not an http(s) URL such as "
                          "https://pigment.app.")


def _check_key(key: str | None, variable: str) -> None:
    """Refuse a key with spaces or control characters (a newline from a secrets file, say).

    requests would reject it with an error quoting the whole header, key included.
    """
    if key and (key != key.strip() or any(ord(char) < 32 or char == "\x7f" for char in key)):
        raise ConfigError(f"{variable} has spaces, a newline or other control characters "
                          "around or in it: set it to the key alone.")
    if key and not key.isascii():  # an HTTP header cannot carry it (a quote pasted as ’, say)
        raise ConfigError(f"{variable} holds characters that are not ASCII (a typographic "
                          "quote or a lookalike letter, say): set it to the key alone, as "
                          "Pigment shows it.")


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())


class PigmentClient:
    """Talks to Pigment's Audit Logs and Import APIs (or the project's local stand-in)."""

    def __init__(
        self,
        base_url: str,
        *,
        audit_key: str | None = None,
        import_key: str | None = None,
        timeout_seconds: float = 60.0,
        retry: RetryPolicy | None = None,
        pacer: RequestPacer | None = None,
        log: Log | None = None,
        key_names: dict[str, str] | None = None,
    ) -> None:
        """``key_names``: where each key comes from, as errors name it ("audit", "import"; the
        environment variables by default, a workspace's YAML field in a Component)."""
        self.base_url = base_url.rstrip("/")
        self._key_names = {**KEY_VARIABLES, **(key_names or {})}
        _check_key(audit_key, self._key_names["audit"])
        _check_key(import_key, self._key_names["import"])
        self._keys = {"audit": audit_key, "import": import_key}
        self.timeout_seconds = timeout_seconds
        self.retry = retry or RetryPolicy()
        self.pacer = pacer or shared_pacer()
        self.log: Log = log or logging.getLogger(__name__)
        self.request_counts: Counter[str] = Counter()
        self._session = requests.Session()
        # The environment's proxies and CA bundle are read once here, as requests would read
        # them on every request; and no ~/.netrc login can replace the Bearer key.
        self._session.trust_env = False
        self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        self._session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                                or os.environ.get("CURL_CA_BUNDLE") or True)

    def __repr__(self) -> str:
        return f"PigmentClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    # --- the API ---------------------------------------------------------------------------

    def iter_audit_pages(self, ingested_since: datetime) -> Iterator[list[Any]]:
        """Yield the pages of events ingested since ``ingested_since``, following cursors.

        Stops when a page carries no ``nextEventsCursor`` or no events; never on an event's
        timestamp, since pages are ordered by ingestion, not by when events happened.
        """
        params = {"ingestedSince": format_ingested_since(ingested_since)}
        seen_cursors: set[str] = set()
        while True:
            body = self._request_json("audit", "GET", AUDIT_PATH, params=dict(params))
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list):
                raise PigmentApiError(
                    "The Audit API answered without an 'events' list; the API may have changed."
                )
            yield events
            cursor = body.get("nextEventsCursor")
            if not cursor or not events:
                return
            if cursor in seen_cursors:
                raise PigmentApiError("The Audit API returned a cursor it had already returned.")
            seen_cursors.add(cursor)
            params["cursor"] = cursor

    def push_csv(self, configuration_id: str, csv: Path | Chunk) -> str:
        """Push one CSV file or chunk (streamed from disk) into an import configuration; its
        import id."""
        def open_body() -> Any:
            return csv.open_body() if isinstance(csv, Chunk) else open(csv, "rb")

        body = self._request_json(
            "push", "POST", PUSH_PATH, params={"configurationId": configuration_id},
            body=open_body, headers={"Content-Type": "text/csv; charset=utf-8"},
            context=f"configuration {configuration_id}",
        )
        return str(body["importId"])  # a 200 without one raised PushAnswerLostError

    def import_status(self, import_id: str) -> dict[str, Any]:
        """The status of one import, with its detailed report."""
        body = self._request_json(
            "status", "GET", STATUS_PATH.format(import_id=import_id),
            params={"includedDetailedReport": "true"}, context=f"import {import_id}",
        )
        if not isinstance(body, dict) or "importStatus" not in body:
            raise PigmentApiError(f"The status of import {import_id} has no importStatus.")
        return body

    def wait_for_import(self, import_id: str, *, poll_seconds: float = 5.0,
                        timeout_seconds: float = 1800.0) -> dict[str, Any]:
        """Poll an import until Completed or Failed; :class:`ImportFailedError` on time-out."""
        deadline = time.monotonic() + timeout_seconds
        attempt = 0
        while True:
            status = self.import_status(import_id)
            if status.get("importStatus") in FINAL_IMPORT_STATUSES:
                return status
            # Small imports finish in a second or two: start polling fast, then slow down.
            interval = min(poll_seconds, 0.25 * 2**attempt)
            attempt += 1
            if time.monotonic() + interval > deadline:
                raise ImportFailedError(
                    f"Import {import_id} was still {status.get('importStatus')} after "
                    f"{timeout_seconds:.0f} s; raise the import poll time-out, or check it in "
                    "Pigment before pushing again."
                )
            time.sleep(interval)  # waiting on Pigment's asynchronous import

    # --- one request, with retries -----------------------------------------------------------

    def _request_json(self, kind: str, method: str, path: str, *, params: dict[str, str],
                      body: Callable[[], Any] | None = None,
                      headers: dict[str, str] | None = None, context: str = "") -> Any:
        key_kind = "audit" if kind == "audit" else "import"
        key = self._keys[key_kind]
        if not key:
            raise ConfigError(f"{self._key_names[key_kind]} is not set; it is needed to call "
                              "Pigment's "
                              f"{'Audit Logs' if key_kind == 'audit' else 'Import'} API.")
        request_headers = {"Authorization": f"Bearer {key}", "Accept": "application/json",
                           **(headers or {})}
        url = self.base_url + path

        def attempt() -> Any:
            self.pacer.acquire()
            self.request_counts[kind] += 1
            handle = body() if body else None
            try:
                # Streamed, so the status is known even when the body is then cut short.
                response = self._session.request(
                    method, url, params=params, data=handle, headers=request_headers,
                    timeout=(min(10.0, self.timeout_seconds), self.timeout_seconds),
                    stream=True,
                )
            except _BROKEN as error:
                raise _Retryable(f"{type(error).__name__} from {method} {path}",
                                 unreached=True) from None
            except requests.RequestException as error:
                # InvalidHeader, InvalidURL...: a setting is wrong; their text may hold the key.
                raise PigmentApiError(self._redact(
                    f"Could not send {method} {self.base_url}{path}: {error}. Check "
                    "PIGMENT_BASE_URL and the API key variables.")) from None
            finally:
                if handle is not None:
                    handle.close()
            started = kind == "push" and response.status_code == 200
            try:
                content = _read_body(response)
            except _BROKEN as error:
                if started:
                    raise self._answer_lost(context, f"cut off ({type(error).__name__})") \
                        from None
                raise _Retryable(f"a body cut short ({type(error).__name__}) from {method} "
                                 f"{path}") from None
            finally:
                response.close()
            if response.status_code in RETRYABLE_STATUSES:
                raise _Retryable(f"HTTP {response.status_code} from {method} {path}",
                                 _retry_after_seconds(response.headers.get("Retry-After")))
            if response.status_code >= 400:
                error = self._api_error(kind, self._key_names[key_kind], key_kind, response,
                                        content, context)
                raise PigmentApiError(self._redact(str(error)), error.status)
            try:
                parsed = jsonio.loads(content)  # integers beyond 64 bits kept exact
            except orjson.JSONDecodeError:
                if started:  # "Import started" whatever the body says: never push it again
                    raise self._answer_lost(context, "not JSON") from None
                raise _Retryable(f"a body that is not JSON from {method} {path}") from None
            if started and not (isinstance(parsed, dict) and parsed.get("importId")):
                raise self._answer_lost(context, "without an importId")
            return parsed

        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=self._stop,
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as error:
            raise PigmentUnavailableError(
                f"Pigment kept failing for {self.retry.patience_seconds:.0f} s (last: "
                f"{error.what}). "
                + (f"If {self.base_url} is not Pigment's API, {_HOST_HELP}; otherwise try "
                   "again later." if error.unreached else
                   "Try again later, or raise the retry patience.")
            ) from None

    def _stop(self, state: RetryCallState) -> bool:
        """Give up once the patience is spent, or when Pigment asks to wait beyond it."""
        left = self.retry.patience_seconds - state.seconds_since_start
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after > left
        return left <= 0

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return error.retry_after
        ceiling = min(self.retry.max_backoff_seconds,
                      self.retry.min_backoff_seconds * 2 ** (state.attempt_number - 1))
        wait = random.uniform(ceiling / 2, ceiling)  # jitter, so parallel clients spread out
        # Never sleep past the patience: the last attempt comes when the patience runs out.
        return max(0.0, min(wait, self.retry.patience_seconds - state.seconds_since_start))

    @staticmethod
    def _answer_lost(context: str, how: str) -> PushAnswerLostError:
        return PushAnswerLostError(
            f"Pigment answered 200 (import started) to the push into {context}, but the answer "
            f"came {how}, so its importId is unknown: Pigment has these rows, so they must not "
            "be pushed again; find the import in the configuration's import history."
        )

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        what = error.what if isinstance(error, _Retryable) else repr(error)
        self.log.warning(f"Pigment: {what}; attempt {state.attempt_number}, retrying in "
                         f"{wait:.1f} s.")

    def _redact(self, text: str) -> str:
        """``text`` with any key replaced, should Pigment ever echo one in an error body."""
        for key in self._keys.values():
            if key:
                text = text.replace(key, "***")
        return text

    @staticmethod
    def _api_error(kind: str, key_name: str, key_kind: str, response: requests.Response,
                   content: bytes, context: str) -> PigmentApiError:
        status = response.status_code
        detail = content.decode(response.encoding or "utf-8", "replace")[:300].strip()
        if status in (401, 403):
            message = (f"Pigment refused the request ({status}). Check {key_name}: "
                       f"{_KEY_HELP[key_kind]}")
        elif status == 404 and kind == "push":
            message = (f"Pigment found no import {context} (404). Check "
                       "PIGMENT_IMPORT_CONFIGURATION_ID (or --import-config): it is the id of "
                       "an import configuration, shown in the application's import settings.")
        elif status == 404 and kind == "status":
            message = f"Pigment has no status for {context} (404)."
        elif status == 404 and kind == "audit":
            message = f"Pigment's Audit API was not found at {response.url} (404): {_HOST_HELP}."
        elif status == 400 and kind == "push":
            # The client serves both the assets and the command line: name both settings.
            message = (f"Pigment rejected the push into {context} (400: bad request or size "
                       "limit exceeded): lower the chunk size (chunk_size_mb of PigmentResource, "
                       f"or pigment-audit --chunk-size). Pigment said: {detail}")
        else:
            message = f"Pigment answered {status} to the {kind} request. Pigment said: {detail}"
        return PigmentApiError(message, status)
