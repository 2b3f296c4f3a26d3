"""The two keys appear nowhere: logs, metadata, exceptions, files, the event log, reprs.

Runs go through ``dagster.materialize`` on a persistent instance in a temporary DAGSTER_HOME,
with keys from the environment (``dagster.EnvVar``, as ``definitions.py`` does) and with plain
values; one run is retried through faults, two fail with 401. Then everything is searched.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from pigment_audit_assets.core.errors import PigmentApiError
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    ASSETS,
    AUDIT_KEY,
    DAY,
    IMPORT_KEY,
    make_client,
    resource_settings,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

KEYS = (AUDIT_KEY, IMPORT_KEY)
# The keys' distinctive tails too, in case something printed them cut or partly masked.
NEEDLES = [*KEYS, AUDIT_KEY[-8:], IMPORT_KEY[-8:]]


def assert_clean(text: str, where: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, f"a key ({needle[:4]}...) appears in {where}"


def assert_files_clean(root: Path) -> int:
    files = [path for path in root.rglob("*") if path.is_file()]
    for path in files:
        data = path.read_bytes()
        for needle in NEEDLES:
            assert needle.encode() not in data, f"a key appears in the file {path}"
    return len(files)


def resource(stand_in: PigmentStandIn, root: Path, *, from_env: bool) -> PigmentResource:
    settings = resource_settings(stand_in, root, retry_min_backoff_seconds=0.01,
                                 retry_max_backoff_seconds=0.1, requests_per_window=10_000,
                                 window_seconds=1.0)
    if from_env:
        settings["audit_api_key"] = dg.EnvVar("PIGMENT_AUDIT_API_KEY")
        settings["import_api_key"] = dg.EnvVar("PIGMENT_IMPORT_API_KEY")
    return PigmentResource(**settings)


@pytest.mark.parametrize("from_env", [True, False], ids=["env_var", "plain_value"])
def test_keys_appear_nowhere_after_runs(stand_in: PigmentStandIn, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture,
                                        from_env: bool) -> None:
    caplog.set_level(logging.DEBUG)  # every Python logger, urllib3's included
    monkeypatch.setenv("PIGMENT_AUDIT_API_KEY", AUDIT_KEY)
    monkeypatch.setenv("PIGMENT_IMPORT_API_KEY", IMPORT_KEY)
    home, root = tmp_path / "dagster_home", tmp_path / "storage"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for day in (DAY - timedelta(days=1), DAY):
        stand_in.add_events(synthetic_events(day, 120, seed=day.toordinal()))
    pigment = resource(stand_in, root, from_env=from_env)
    failures: list[str] = []
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        def run(day: str) -> dg.ExecuteInJobResult:
            result = dg.materialize(ASSETS, resources={"pigment": pigment}, partition_key=day,
                                    instance=instance, raise_on_error=False)
            failures.extend(event.step_failure_data.error.to_string()
                            for event in result.all_events if event.is_step_failure)
            return result

        # A run that retries through every kind of fault, on every endpoint.
        stand_in.inject(Fault("status", "audit", status=429, retry_after="0"),
                        Fault("reset", "audit"), Fault("truncate", "audit"),
                        Fault("malformed_json", "audit"), Fault("status", "push", status=503),
                        Fault("reset", "push"), Fault("truncate", "status"),
                        Fault("truncate", "push"))
        retried = run(DAY.isoformat())
        assert retried.success
        # Two runs refused with 401: on the audit call, then on the push.
        stand_in.inject(Fault("status", "audit", status=401))
        audit_refused = run((DAY - timedelta(days=1)).isoformat())
        assert not audit_refused.success
        stand_in.inject(Fault("status", "push", status=401))
        push_refused = run((DAY - timedelta(days=1)).isoformat())
        assert not push_refused.success
        assert any("PIGMENT_AUDIT_API_KEY" in text for text in failures)
        assert any("PIGMENT_IMPORT_API_KEY" in text for text in failures)

        runs = [retried, audit_refused, push_refused]
        entries = 0
        for result in runs:
            for entry in instance.all_logs(result.run_id):
                entries += 1
                assert_clean(serialize_value(entry), f"the event log of run {result.run_id}")
            stored = instance.get_run_by_id(result.run_id)
            assert stored is not None
            assert_clean(serialize_value(stored), "the stored run (config, tags)")
            for materialization in result.get_asset_materialization_events():
                assert_clean(repr(materialization.materialization.metadata), "metadata")
            for check in result.get_asset_check_evaluations():
                assert_clean(repr(check.metadata), "check metadata")
        assert entries > 50
        for text in failures:
            assert_clean(text, "a step failure")
        assert len(failures) == 2
        assert_clean(caplog.text, "Python logging")
        retries = [entry for result in runs for entry in instance.all_logs(result.run_id)
                   if "retrying in" in entry.user_message]
        assert len(retries) >= 6  # the faults were met and retried, and logged
    # Every file: the storage root, DAGSTER_HOME (run and event databases, compute logs).
    assert assert_files_clean(root) >= 4
    assert assert_files_clean(home) >= 1
    assert_clean(repr(pigment) + str(pigment), "the resource's repr")


def test_reprs_and_exceptions_hide_the_keys(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    pigment = PigmentResource(**resource_settings(stand_in, tmp_path))
    client = pigment.client(logging.getLogger(__name__), audit=True, push=True)
    for text in (repr(pigment), str(pigment), repr(client), str(client),
                 repr(vars(client).get("pacer")), repr(client.retry)):
        assert_clean(text, "a repr")
    stand_in.inject(Fault("status", "audit", status=401))
    with pytest.raises(PigmentApiError) as caught:
        next(make_client(stand_in).iter_audit_pages(datetime(2020, 1, 1, tzinfo=timezone.utc)))
    error: Any = caught.value
    chain = [error, error.__cause__, error.__context__]
    for item in chain:
        if item is not None:
            assert_clean(f"{item!r} {item}", "an exception")
    assert_clean(caught.getrepr().__str__(), "the traceback")


class EchoingStandIn(PigmentStandIn):
    """A server that echoes the Authorization header in its 400 answers (a careless proxy)."""

    def _respond(self, endpoint: str, match: str, query_string: str, headers: Any, body: bytes,
                 size: int) -> Any:
        from pigment_audit_assets_tests.stand_in import _error

        return _error(400, f"bad request with {headers.get('Authorization')}")


def test_a_key_echoed_by_the_server_is_redacted_from_the_error(tmp_path: Path) -> None:
    with EchoingStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY) as echoing:
        client = make_client(echoing)
        with pytest.raises(PigmentApiError) as caught:
            next(client.iter_audit_pages(datetime(2020, 1, 1, tzinfo=timezone.utc)))
        assert "Bearer ***" in str(caught.value)
        assert_clean(str(caught.value), "an echoed error")
        csv_path = tmp_path / "c.csv"
        csv_path.write_text("id\r\n1\r\n", encoding="utf-8")
        with pytest.raises(PigmentApiError) as caught:
            client.push_csv("c", csv_path)
        assert "Bearer ***" in str(caught.value)
        assert_clean(str(caught.value), "an echoed error")
