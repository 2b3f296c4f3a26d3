"""Changing PIGMENT_AUDIT_TIMEZONE on a storage that holds days: refused at the start, with
the command that moves the stored days; after that command, every day exact in the new zone
and no event pushed twice."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from pigment_audit_assets.core.collect import classify
from pigment_audit_assets.core.storage import LocalStorage
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
