"""Days a scan changed, until an import of them has completed: ``pending/<day>.json``.

The daily scan files each late event into its own, older day, and then moves the watermark
past it; the CSV and import steps of the same run redo that day. If one of them fails, no later
scan sees the event again (it is behind the watermark, and already in the raw file), so without
a record the day would never be pushed. Every scan therefore marks each day before it rewrites
its raw file, under the day's raw lease (a backfill's and a run by hand's too: their events
reach Pigment through the next daily run when their own import fails or is not in the run);
the CSV and import steps of every daily run include the marked days (the import only those
whose CSV was written under the mark); and the mark goes once an import of the day has
completed from a CSV of the raw file the mark was made for.

A mark holds a ``token``, new each time the day is marked, and ``csv_of``: the token that was
current when the day's CSV was last written (the CSV step notes it under the same raw lease).
An import clears the mark, under the raw lease again, only if the mark is still the one it
read before it pushed and its CSV was written under it: a day marked again meanwhile, by a
scan that brought it more events, stays marked. Marking before the write errs the safe way: a
scan killed between the two leaves a mark with nothing new behind it, which costs the next
daily run one CSV and an import with nothing to push.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

import orjson

from .client import Log
from .lease import hold_lease
from .storage import Storage

PENDING_FOLDER = "pending/"


@dataclass(frozen=True)
class PendingMark:
    """A day's mark as stored."""

    day: date
    token: str
    csv_of: str | None  # the token its CSV was last written under, if any

    @property
    def csv_current(self) -> bool:
        """Whether the day's CSV was written from the raw file this mark is for."""
        return self.csv_of == self.token


def pending_key(day: date) -> str:
    """Where the day's mark lives."""
    return f"{PENDING_FOLDER}{day.isoformat()}.json"


def mark_pending(storage: Storage, day: date) -> None:
    """Mark the day as changed; call it under the day's raw lease, before the raw write."""
    _write(storage, day, uuid.uuid4().hex, None)


def read_mark(storage: Storage, day: date) -> PendingMark | None:
    """The day's mark, or None if it has none."""
    data = storage.read_bytes(pending_key(day))
    if data is None:
        return None
    try:
        body = orjson.loads(data)
        token, csv_of = body["token"], body.get("csv_of")
        if not isinstance(token, str) or not (csv_of is None or isinstance(csv_of, str)):
            raise TypeError("token and csv_of must be texts")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        # Unreadable: treated as a fresh mark, so the day is redone and the mark rewritten.
        return PendingMark(day, f"unreadable-{uuid.uuid4().hex}", None)
    return PendingMark(day, token, csv_of)


def pending_days(storage: Storage) -> list[date]:
    """The marked days, oldest first (keys that are not a day's mark are left out)."""
    days = []
    for key in storage.list(PENDING_FOLDER):
        name = key.rsplit("/", 1)[-1]
        try:
            days.append(date.fromisoformat(name.removesuffix(".json")))
        except ValueError:
            continue
    return sorted(days)


def note_csv_written(storage: Storage, day: date) -> None:
    """The day's CSV was just written from its raw file; call it under the day's raw lease."""
    mark = read_mark(storage, day)
    if mark is not None and not mark.csv_current:
        _write(storage, day, mark.token, mark.token)


def clear_if_pushed(storage: Storage, seen: PendingMark, *, owner: str, log: Log,
                    wait_seconds: float = 3600.0) -> bool:
    """After an import of the day completed: remove the mark if it is still ``seen`` (read
    before the push) and its CSV was current then. Whether it was removed."""
    if not seen.csv_current:
        return False
    with hold_lease(storage, storage.raw_lease_key(seen.day), owner, log=log,
                    wait_seconds=wait_seconds) as lease:
        if read_mark(storage, seen.day) != seen:
            return False  # marked again meanwhile: its new events need another import
        lease.check()
        storage.delete(pending_key(seen.day))
        return True


def _write(storage: Storage, day: date, token: str, csv_of: str | None) -> None:
    with storage.writer(pending_key(day)) as handle:
        handle.write(orjson.dumps({"token": token, "csv_of": csv_of}))
