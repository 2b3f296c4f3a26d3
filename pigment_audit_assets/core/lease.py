"""One writer per day: the leases a day's steps hold while they write.

A scan holds ``leases/raw-<day>.json`` while it merges and rewrites the day's raw file, and the
CSV step holds the same lease while it reads that file and writes the CSV; the import step
holds ``leases/import-<day>.json`` while it pushes. A lease is a small object beside the day's
files naming its holder and when it expires. It is taken with a conditional create (a hard
link on local disk, ``If-None-Match: *`` on an object store), renewed by a background thread
with a conditional replace (``If-Match`` on the ETag), and deleted when the step ends. A
holder killed with ``kill -9`` stops renewing, so its lease expires and the next run takes it
over (at once, when the holder ran on the same host and its process is gone). Two runs of one
day, from two deployments on one storage or with no pool limit, push one after the other: the
second reads the import record only once it holds the lease, so it pushes nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from .client import Log
from .errors import DayLeaseHeldError, StorageError
from .storage import Storage

DEFAULT_TTL_SECONDS = 300.0


@dataclass
class Lease:
    """A lease this process holds; :meth:`check` fails once it was lost."""

    storage: Storage
    key: str
    body: dict[str, Any]
    version: str
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """Raise if the lease was lost (taken over after it expired): stop writing now."""
        if self.lost:
            raise DayLeaseHeldError(self.lost)


def _holder(body: dict[str, Any]) -> str:
    return (f"{body.get('owner', 'an unknown run')} (host {body.get('host', '?')}, pid "
            f"{body.get('pid', '?')})")


def _dead_here(body: dict[str, Any]) -> bool:
    """Whether the holder ran on this host and its process is gone (killed, say): its lease
    can be taken at once instead of after its expiry. Another host's holder is never judged."""
    if body.get("host") != socket.gethostname() or not isinstance(body.get("pid"), int):
        return False
    if body["pid"] == os.getpid():
        return False
    try:
        os.kill(body["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("expiresAt"), float) else None


@contextlib.contextmanager
def hold_lease(
    storage: Storage,
    key: str,
    owner: str,
    *,
    log: Log,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    wait_seconds: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> Iterator[Lease]:
    """Hold the lease ``key`` for the block, waiting up to ``wait_seconds`` for its holder.

    Raises :class:`DayLeaseHeldError`, naming the holder, when it is still held after the wait.
    """
    lease = _acquire(storage, key, owner, log=log, ttl_seconds=ttl_seconds,
                     wait_seconds=wait_seconds, clock=clock)
    renewer = threading.Thread(target=_renew, args=(lease, ttl_seconds, clock), daemon=True,
                               name=f"lease-{key}")
    renewer.start()
    try:
        yield lease
    finally:
        lease._stop.set()
        renewer.join()
        _release(lease)


def _acquire(storage: Storage, key: str, owner: str, *, log: Log, ttl_seconds: float,
             wait_seconds: float, clock: Callable[[], float]) -> Lease:
    token = uuid.uuid4().hex
    deadline = clock() + wait_seconds
    announced = False
    while True:
        body = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                "token": token, "expiresAt": clock() + ttl_seconds}
        data = orjson.dumps(body)
        if storage.create(key, data):
            current = storage.read_versioned(key)
            if current is not None and (_parse(current[0]) or {}).get("token") == token:
                return Lease(storage, key, body, current[1])
            continue  # taken over at once (it cannot have expired): try again
        current = storage.read_versioned(key)
        if current is None:
            continue  # released meanwhile
        held = _parse(current[0])
        if held is None or held["expiresAt"] < clock() or _dead_here(held):
            reason = ("unreadable" if held is None else
                      f"expired, left by {_holder(held)}" if held["expiresAt"] < clock() else
                      f"left by {_holder(held)}, which no longer runs on this host")
            if storage.replace(key, data, current[1]):
                log.warning(f"Took over the lease {storage.uri(key)} ({reason}).")
                current = storage.read_versioned(key)
                if current is not None and (_parse(current[0]) or {}).get("token") == token:
                    return Lease(storage, key, body, current[1])
            continue
        if clock() >= deadline:
            raise DayLeaseHeldError(
                f"{_holder(held)} holds {storage.uri(key)} until "
                f"{datetime.fromtimestamp(held['expiresAt'], timezone.utc):%Y-%m-%d %H:%M:%S}Z "
                "and is writing this day now. Let it finish (this run waited "
                f"{wait_seconds:.0f} s), then run the day again: nothing is lost or pushed "
                "twice. If that run is dead, its lease expires by itself at that time.")
        if not announced:
            log.info(f"Waiting for {_holder(held)}, which holds {storage.uri(key)} and is "
                     "writing this day now.")
            announced = True
        # Another process's progress is what we wait for: poll, at most until its expiry.
        time.sleep(max(0.05, min(2.0, held["expiresAt"] - clock(), deadline - clock())))


def _renew(lease: Lease, ttl_seconds: float, clock: Callable[[], float]) -> None:
    while not lease._stop.wait(ttl_seconds / 3):
        body = {**lease.body, "expiresAt": clock() + ttl_seconds}
        try:
            if not lease.storage.replace(lease.key, orjson.dumps(body), lease.version):
                lease.lost = (f"The lease {lease.storage.uri(lease.key)} was taken over by "
                              "another run; this one stops writing.")
                return
            current = lease.storage.read_versioned(lease.key)
        except StorageError:
            continue  # the storage may answer next time; the lease is still ours until expiry
        if current is not None:
            lease.body, lease.version = body, current[1]


def _release(lease: Lease) -> None:
    if lease.lost:
        return
    with contextlib.suppress(StorageError):
        current = lease.storage.read_versioned(lease.key)
        if current is not None and (_parse(current[0]) or {}).get("token") == \
                lease.body["token"]:
            lease.storage.delete(lease.key)
