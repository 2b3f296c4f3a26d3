"""Changing PIGMENT_AUDIT_TIMEZONE on a storage that holds days: refused at the start, with
the command that moves the stored days; after that command, every day exact in the new zone
and no event pushed twice."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from pigment_audit_assets.core.collect import classify
from pigment_audit_assets.core.pending import mark_pending, pending_days
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.zones import check_zone, rezone
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import DAY, resource_settings
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_assets import run

PARIS = ZoneInfo("Europe/Paris")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_zone_change_is_refused_until_the_stored_days_are_moved(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    days = [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)]
    for day in [DAY - timedelta(days=2), *days, DAY + timedelta(days=2)]:
        stand_in.add_events(synthetic_events(day, 240, seed=day.toordinal()))
    data = tmp_path / "data"
    first, last = days[0].isoformat(), days[-1].isoformat()
    utc = PigmentResource(**resource_settings(stand_in, tmp_path, storage_url=str(data)))
    assert run(utc, first=first, last=last).success
    before, requests = _snapshot(data), sum(stand_in.request_counts.values())

    paris = PigmentResource(**resource_settings(stand_in, tmp_path, storage_url=str(data),
                                                timezone="Europe/Paris"))
    refused = run(paris, first=first, last=last, raise_on_error=False)
    assert not refused.success
    failure = next(event for event in refused.all_events if event.is_step_failure)
    error, message = failure.step_failure_data.error, ""  # type: ignore[union-attr]
    while error is not None:
        message, error = message + error.message, error.cause
    assert "PIGMENT_AUDIT_TIMEZONE=Europe/Paris" in message and "days of UTC" in message
    assert f"pigment-audit-rezone --storage {data} --timezone Europe/Paris" in message
    assert _snapshot(data) == before  # nothing written
    assert sum(stand_in.request_counts.values()) == requests  # nothing fetched

    moved = subprocess.run([str(Path(sys.executable).with_name("pigment-audit-rezone")),
                            "--storage", str(data), "--timezone", "Europe/Paris"],
                           capture_output=True, text=True)
    assert moved.returncode == 0, moved.stderr
    assert re.search(r"Moved [1-9][\d,]* event\(s\) from UTC to Europe/Paris", moved.stderr)
    storage = LocalStorage(data)
    for path in sorted((data / "raw").iterdir()):  # every stored event now in its Paris day
        for line in path.read_bytes().splitlines():
            placed = classify(orjson.loads(line), PARIS)
            assert not isinstance(placed, str) and placed[1].isoformat() == path.stem

    result = run(paris, first=first, last=last)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    for day in days:
        truth = sorted(e["id"] for e in stand_in.visible_events(event_day=day, tz="Europe/Paris"))
        raw = [orjson.loads(line)["id"] for line in storage.raw_path(day).read_bytes().splitlines()]
        assert sorted(raw) == truth
    pushed = [row["id"] for row in stand_in.pushed_rows()]
    assert len(pushed) == len(set(pushed))  # events that changed day were not pushed again
    bad_zone = subprocess.run([str(Path(sys.executable).with_name("pigment-audit-rezone")),
                               "--storage", str(data), "--timezone", "Mars/Olympus"],
                              capture_output=True, text=True)
    assert bad_zone.returncode == 2 and "Mars/Olympus" in bad_zone.stderr
    # A mistyped storage path: refused, not made into a new storage stamped with the zone.
    mistyped = tmp_path / "dta"
    refused = subprocess.run([str(Path(sys.executable).with_name("pigment-audit-rezone")),
                              "--storage", str(mistyped), "--timezone", "Europe/Paris"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "holds no day files" in refused.stderr
    assert not mistyped.exists()


def test_the_days_a_zone_change_rewrites_are_marked_pending(tmp_path: Path) -> None:
    """An event of a day whose import never completed may move to a neighbour day: that day
    is marked too, so that the next daily run rebuilds its CSV and pushes it."""
    storage = LocalStorage(tmp_path / "data")
    check_zone(storage, ZoneInfo("UTC"))

    def event(event_id: str, at: str) -> bytes:
        return orjson.dumps({"id": event_id, "eventType": "UserLoggedIn",
                             "eventTimestamp": at, "ingestionTimestamp": at})

    before, after = DAY - timedelta(days=1), DAY + timedelta(days=1)
    storage.write_bytes(storage.raw_key(before), event("noon", f"{before}T12:00:00.000Z") + b"\n")
    storage.write_bytes(storage.raw_key(DAY), event("noon-2", f"{DAY}T12:00:00.000Z") + b"\n"
                        + event("late", f"{DAY}T23:30:00.000Z") + b"\n")  # Paris: the next day
    mark_pending(storage, DAY)  # scanned, its import not completed yet
    rezone(storage, PARIS, log=logging.getLogger(__name__))
    assert storage.raw_path(after).read_bytes().count(b'"late"') == 1
    assert pending_days(storage) == [DAY, after]  # the day left as it was is not marked


class _FailingRecords(LocalStorage):
    """A storage whose writes and deletes of import records fail after ``allowed`` of them:
    a zone change interrupted there."""

    def __init__(self, root: Path, allowed: int) -> None:
        super().__init__(root)
        self.allowed = allowed

    def _count(self, key: str) -> None:
        if key.startswith("imports/"):
            if self.allowed == 0:
                raise OSError("interrupted")
            self.allowed -= 1

    def write_bytes(self, key: str, data: bytes) -> None:
        self._count(key)
        super().write_bytes(key, data)

    def delete(self, key: str) -> None:
        self._count(key)
        super().delete(key)


def _records(storage: LocalStorage) -> dict[str, list[dict[str, object]]]:
    return {key: orjson.loads(storage.read_bytes(key) or b"")["imports"]
            for key in storage.list("imports/")}


@pytest.mark.parametrize("allowed", range(9))
def test_a_zone_change_interrupted_while_moving_records_loses_and_repeats_nothing(
        tmp_path: Path, allowed: int) -> None:
    """Interrupted after any write of an import record, then run again: every pushed id on
    record all along, and in the end once, in its event's new day, in one entry per push."""
    root = tmp_path / "data"
    storage = LocalStorage(root)
    check_zone(storage, ZoneInfo("UTC"))
    days = [DAY - timedelta(days=offset) for offset in (2, 1, 0)]
    home: dict[str, str] = {}
    for day in days:  # each day: one event staying, one moving to the next day in Paris
        lines = []
        for event_id, at in ((f"{day}-noon", "12:00"), (f"{day}-late", "23:30")):
            lines.append(orjson.dumps({"id": event_id, "eventType": "UserLoggedIn",
                                       "eventTimestamp": f"{day}T{at}:00.000Z"}))
            home[event_id] = (day + timedelta(days=at == "23:30")).isoformat()
        storage.write_bytes(storage.raw_key(day), b"\n".join(lines) + b"\n")
        storage.write_bytes(storage.import_record_key(day), orjson.dumps({
            "day": day.isoformat(), "imports": [{
                "importId": f"import-{day}", "configurationId": "config", "chunk": 1,
                "rows": 2, "pushedAt": f"{day}T23:59:00+00:00", "status": "Completed",
                "eventIds": [f"{day}-noon", f"{day}-late"]}, {
                # A chunk whose answer was lost before its ids were recorded: none to move.
                "importId": None, "configurationId": "config", "chunk": 2, "rows": 7,
                "pushedAt": f"{day}T23:59:30+00:00", "status": "AnswerLost"}]}))
    pushed = set(home)

    interrupted = _FailingRecords(root, allowed)
    try:
        rezone(interrupted, PARIS, log=logging.getLogger(__name__))
    except OSError:
        on_record = {event_id for entries in _records(storage).values()
                     for entry in entries
                     for event_id in entry.get("eventIds", [])}  # type: ignore[attr-defined]
        assert on_record >= pushed  # nothing pushed is off the record, so never pushed twice
    rezone(storage, PARIS, log=logging.getLogger(__name__))

    placed: list[tuple[str, str]] = []
    lost_answers: list[tuple[str, object]] = []
    for key, entries in _records(storage).items():
        identities = [(entry["importId"], entry["chunk"], entry["pushedAt"]) for entry in entries]
        assert len(identities) == len(set(identities))  # no entry repeated
        for entry in entries:
            if "eventIds" not in entry:
                lost_answers.append((key[len("imports/"):][:10], entry["pushedAt"]))
                assert entry["rows"] == 7
                continue
            assert entry["rows"] == len(entry["eventIds"])  # type: ignore[arg-type]
            placed += [(event_id, key[len("imports/"):][:10])
                       for event_id in entry["eventIds"]]  # type: ignore[attr-defined]
    assert sorted(placed) == sorted(home.items())  # each id once, in its new day
    assert sorted(lost_answers) == [(day.isoformat(), f"{day}T23:59:30+00:00") for day in days]
