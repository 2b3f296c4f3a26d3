"""Bad configuration fails early, before any request, with a message naming the variable/field."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from pigment_audit_assets.core.errors import ConfigError
from pigment_audit_assets.defs.partitions import daily_partitions
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import ASSETS, DAY, resource_settings
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def failures_of(stand_in: PigmentStandIn, root: Path, **overrides: Any) -> dict[str, str]:
    """Materialize DAY with overridden settings; each failed step's error text, by step."""
    stand_in.add_events(synthetic_events(DAY, 40, seed=13))
    settings = resource_settings(stand_in, root, requests_per_window=10_000, window_seconds=1.0)
    settings.update(overrides)
    result = dg.materialize(ASSETS, resources={"pigment": PigmentResource(**settings)},
                            partition_key=DAY.isoformat(), raise_on_error=False)
    assert not result.success
    return {event.step_key or "": event.step_failure_data.error.to_string()
            for event in result.all_events if event.is_step_failure}


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"audit_api_key": None}, "PIGMENT_AUDIT_API_KEY"),
    ({"base_url": "pigment.app"}, "PIGMENT_BASE_URL"),
    ({"base_url": "ftp://pigment.app"}, "PIGMENT_BASE_URL"),
    ({"base_url": "https://"}, "PIGMENT_BASE_URL"),
    ({"timezone": "Mars/Olympus_Mons"}, "PIGMENT_AUDIT_TIMEZONE"),
    ({"storage_url": "webdav://host/audit"}, "PIGMENT_AUDIT_STORAGE_URL"),
    ({"storage_url": " "}, "PIGMENT_AUDIT_STORAGE_URL"),
    ({"requests_per_window": 0}, "requests_per_window"),
    ({"retry_patience_seconds": 0}, "retry_patience_seconds"),
], ids=["no-audit-key", "no-scheme", "ftp", "no-host", "zone", "webdav-storage", "blank-storage",
        "pace", "patience"])
def test_a_bad_setting_stops_the_fetch_before_any_request(
        stand_in: PigmentStandIn, tmp_path: Path, overrides: dict[str, Any],
        needle: str) -> None:
    failures = failures_of(stand_in, tmp_path / "root", **overrides)
    assert list(failures) == ["raw_audit_events"]
    assert needle in failures["raw_audit_events"]
    assert "ConfigError" in failures["raw_audit_events"]
    assert sum(stand_in.request_counts.values()) == 0  # not one request
    assert not (tmp_path / "root" / "raw").exists()  # not one file


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"import_api_key": None}, "PIGMENT_IMPORT_API_KEY"),
    ({"import_configuration_id": None}, "PIGMENT_IMPORT_CONFIGURATION_ID"),
    ({"chunk_size_mb": 0}, "chunk_size_mb"),
    ({"chunk_size_mb": -1}, "chunk_size_mb"),
], ids=["no-import-key", "no-configuration", "chunk-zero", "chunk-negative"])
def test_a_bad_push_setting_stops_a_full_run_at_its_start(
        stand_in: PigmentStandIn, tmp_path: Path, overrides: dict[str, Any],
        needle: str) -> None:
    failures = failures_of(stand_in, tmp_path, **overrides)
    assert list(failures) == ["raw_audit_events"]  # the run's first step, before any request
    assert needle in failures["raw_audit_events"]
    assert sum(stand_in.request_counts.values()) == 0
    assert not (tmp_path / "raw").exists() and not (tmp_path / "imports").exists()


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"import_api_key": None}, "PIGMENT_IMPORT_API_KEY"),
    ({"chunk_size_mb": 0}, "chunk_size_mb"),
], ids=["no-import-key", "chunk-zero"])
def test_a_bad_push_setting_stops_a_csv_and_import_run_before_the_csv(
        stand_in: PigmentStandIn, tmp_path: Path, overrides: dict[str, Any],
        needle: str) -> None:
    stand_in.add_events(synthetic_events(DAY, 40, seed=13))
    settings = resource_settings(stand_in, tmp_path)
    raw = [asset for asset in ASSETS if asset.key.path[-1] == "raw_audit_events"]
    assert dg.materialize(raw, resources={"pigment": PigmentResource(**settings)},
                          partition_key=DAY.isoformat()).success
    settings.update(overrides)
    csv_and_import = [asset for asset in ASSETS if asset.key.path[-1] != "raw_audit_events"]
    result = dg.materialize(csv_and_import, resources={"pigment": PigmentResource(**settings)},
                            partition_key=DAY.isoformat(), raise_on_error=False,
                            selection=[asset.key for asset in csv_and_import])
    failures = {event.step_key: event.step_failure_data.error.to_string()
                for event in result.all_events if event.is_step_failure}
    assert list(failures) == ["audit_events_csv"]  # the run's first step, before the CSV
    assert needle in failures["audit_events_csv"]
    assert not (tmp_path / "csv").exists() and stand_in.request_counts["push"] == 0


def test_push_settings_do_not_block_a_run_without_the_import(stand_in: PigmentStandIn,
                                                            tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 40, seed=13))
    settings = resource_settings(stand_in, tmp_path, import_api_key=None,
                                 import_configuration_id=None)
    raw_and_csv = [asset for asset in ASSETS if asset.key.path[-1] != "audit_events_import"]
    result = dg.materialize(raw_and_csv, resources={"pigment": PigmentResource(**settings)},
                            partition_key=DAY.isoformat())
    assert result.success
    assert (tmp_path / "csv" / f"{DAY.isoformat()}.csv").exists()


def test_a_chunk_too_small_for_a_record_stops_the_import_before_any_push(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    # 524 bytes: only the CSV tells that no record fits, so the import step finds it.
    failures = failures_of(stand_in, tmp_path, chunk_size_mb=0.0005)
    assert list(failures) == ["audit_events_import"]  # raw and CSV went through
    assert "chunk_size_mb is too small" in failures["audit_events_import"]
    assert stand_in.request_counts["push"] == 0 and stand_in.request_counts["status"] == 0
    assert not (tmp_path / "imports").exists()


def test_partitions_refuse_an_unknown_zone_and_a_start_not_in_the_past() -> None:
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_TIMEZONE"):
        daily_partitions(None, "Mars/Olympus_Mons")
    today = date.today()
    for start in (today + timedelta(days=1), today + timedelta(days=400)):
        with pytest.raises(ConfigError, match="PIGMENT_AUDIT_START_DATE"):
            daily_partitions(start.isoformat(), "UTC")
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_START_DATE"):
        daily_partitions("2025-13-01", "UTC")
    assert daily_partitions((today - timedelta(days=5)).isoformat(), "UTC").start.date() == \
        today - timedelta(days=5)


def test_loading_the_definitions_with_a_future_start_date_fails_naming_it() -> None:
    env = {**os.environ, "PIGMENT_AUDIT_START_DATE":
           (date.today() + timedelta(days=3)).isoformat()}
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-c", "import pigment_audit_assets.definitions"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigError" in done.stderr and "PIGMENT_AUDIT_START_DATE" in done.stderr


def test_definitions_without_keys_name_the_variables(stand_in: PigmentStandIn, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pigment_audit_assets.definitions import build_resource

    for variable in ("PIGMENT_AUDIT_API_KEY", "PIGMENT_IMPORT_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIGMENT_BASE_URL", stand_in.base_url)
    with dg.build_resources({"pigment": build_resource()}) as built:  # EnvVars resolved
        resource = built.pigment
    assert resource.base_url == stand_in.base_url
    with pytest.raises(ConfigError, match="PIGMENT_AUDIT_API_KEY"):
        resource.client(log, audit=True)
    with pytest.raises(ConfigError, match="PIGMENT_IMPORT_API_KEY"):
        resource.client(log, push=True)
    assert sum(stand_in.request_counts.values()) == 0
