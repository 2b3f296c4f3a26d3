"""``PigmentAuditComponent``: several Pigment workspaces in one code location, and ``dg``.

Each workspace runs against its own stand-in (its own keys, events and import configuration),
from a small `dg` project written in a temporary folder (``workspace_project.py``). Runs are
real ``execute_in_process`` runs of the workspaces' own jobs, loaded from their YAML; ``dg``
commands are real subprocesses of the venv's ``dg``.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pydantic
import pytest
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.errors import ConfigError
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs.component import (
    PigmentAuditComponent,
    WorkspaceConfigError,
    WorkspacePigmentResource,
    check_distinct,
)
from pigment_audit_assets_tests.conftest import DAY, STAND_IN_NOW, TODAY, days_before
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.workspace_project import write_project, write_workspace

ROOT = Path(__file__).resolve().parent.parent
DG = Path(sys.executable).parent / "dg"
FIRST = (TODAY - timedelta(days=60)).isoformat()
ASSET_NAMES = ("raw_audit_events", "audit_events_csv", "audit_events_import")
CHECK_NAMES = {"event_ids_unique_and_in_day", "no_rejected_events", "one_csv_row_per_event",
               "import_reports_cover_rows"}


class RecordingStandIn(PigmentStandIn):
    """The stand-in, also recording the ``Authorization`` header of every request."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.authorizations: list[str] = []

    def _respond(self, endpoint: str, match: str, query_string: str, headers: Any,
                 body: bytes, size: int) -> Any:
        self.authorizations.append(headers.get("Authorization") or "")
        return super()._respond(endpoint, match, query_string, headers, body, size)


WORKSPACES = {
    "acme": {"audit_key": "acme-audit-key-71c2", "import_key": "acme-import-key-0b9e",
             "configuration_id": "00000000-0000-4000-8000-00000000aaaa", "events": 120},
    "globex": {"audit_key": "globex-audit-key-3d5f", "import_key": "globex-import-key-e84a",
               "configuration_id": "00000000-0000-4000-8000-00000000bbbb", "events": 70},
}
SECRETS = [value for settings in WORKSPACES.values()
           for value in (settings["audit_key"], settings["import_key"])]


@pytest.fixture
def stand_ins() -> Iterator[dict[str, RecordingStandIn]]:
    """One stand-in per workspace, each with its own keys and import configuration."""
    servers = {name: RecordingStandIn(audit_key=settings["audit_key"],
                                      import_key=settings["import_key"],
                                      configuration_ids=(settings["configuration_id"],),
                                      page_size=50, now=STAND_IN_NOW)
               for name, settings in WORKSPACES.items()}
    for server in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def attributes(name: str, stand_in: PigmentStandIn, root: Path) -> dict[str, Any]:
    """A workspace's YAML attributes: its stand-in, its own folder, its variables' names."""
    upper = name.upper()
    return {"name": name, "audit_key_env": f"{upper}_AUDIT_KEY",
            "import_key_env": f"{upper}_IMPORT_KEY",
            "import_configuration_id": WORKSPACES[name]["configuration_id"],
            "storage_url": str(root / "data" / name), "timezone": "UTC",
            "first_partition": FIRST, "schedule_hour": 5, "lookback_days": 2,
            "chunk_size_mb": 0.02, "base_url": stand_in.base_url}


def set_keys(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Put the workspaces' keys in the variables their YAML names."""
    for name in names:
        monkeypatch.setenv(f"{name.upper()}_AUDIT_KEY", WORKSPACES[name]["audit_key"])
        monkeypatch.setenv(f"{name.upper()}_IMPORT_KEY", WORKSPACES[name]["import_key"])


def load(folder: Path, module: str, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """Import the project's ``definitions`` module, as Dagster does, and return its defs."""
    monkeypatch.syspath_prepend(str(folder))
    return importlib.import_module(f"{module}.definitions").defs


def unique_module() -> str:
    return f"pigment_ws_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def two_workspaces(stand_ins: dict[str, RecordingStandIn], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """The definitions of a project with the two workspaces, both keys set."""
    set_keys(monkeypatch, *WORKSPACES)
    module = unique_module()
    write_project(tmp_path / "project", module,
                  {name: attributes(name, stand_ins[name], tmp_path) for name in WORKSPACES})
    return load(tmp_path / "project", module, monkeypatch)


def run_config(name: str) -> dict[str, Any]:
    """Launch-time settings on top of the YAML's (configure_at_launch keeps the others)."""
    return {"resources": {f"pigment_{name}": {"config": {
        "requests_per_window": 100_000, "window_seconds": 1.0, "import_poll_seconds": 0.05,
        "retry_min_backoff_seconds": 0.01, "retry_max_backoff_seconds": 0.2}}}}


def run_job(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, *,
            day: str | None = None, first: str | None = None,
            last: str | None = None) -> dg.ExecuteInProcessResult:
    """Run workspace ``name``'s own job for a day, or a range as one run."""
    tags = ({ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
            if first and last else {})
    job = defs.resolve_job_def(f"{name}_pigment_audit_job")
    return job.execute_in_process(run_config=run_config(name), instance=instance,
                                  partition_key=day, tags=tags, raise_on_error=False)


def raw_ids(root: Path, day: Any) -> list[str]:
    return [orjson.loads(line)["id"]
            for line in LocalStorage(root).raw_path(day).read_bytes().splitlines()]


def folder_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (nanoseconds)."""
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for ``dg``: no Pigment variable at all, a quiet DAGSTER_HOME."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIGMENT_", "ACME_", "GLOBEX_"))}
    env.update(extra)
    return env


def run_dg(args: list[str], cwd: Path, home: Path, *, input_text: str | None = None,
           **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``dg`` in ``cwd`` with DAGSTER_HOME ``home`` (telemetry off)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return subprocess.run([str(DG), *args], cwd=cwd, env=clean_env(DAGSTER_HOME=str(home),
                                                                   **extra_env),
                          input=input_text, capture_output=True, text=True, timeout=300)


# --- two workspaces in one code location ------------------------------------------------------

def test_two_workspaces_each_day_exact_keys_and_imports_their_own(
        two_workspaces: dg.Definitions, stand_ins: dict[str, RecordingStandIn],
        tmp_path: Path) -> None:
    for index, (name, settings) in enumerate(WORKSPACES.items()):
        for day in days_before(DAY + timedelta(days=1), 3):
            stand_ins[name].add_events(synthetic_events(day, settings["events"],
                                                        seed=day.toordinal() + 1000 * index))
    truth = {name: sorted(event["id"] for event in stand_ins[name].visible_events(event_day=DAY))
             for name in WORKSPACES}
    assert not set(truth["acme"]) & set(truth["globex"])  # different events
    # Every workspace's steps that call Pigment share the one pool: the limit is per IP.
    assert {(key.path[0], two_workspaces.resolve_assets_def(key).op.pool)
            for name in WORKSPACES for key in (dg.AssetKey([name, "raw_audit_events"]),
                                               dg.AssetKey([name, "audit_events_import"]))} == {
        (name, "pigment_api") for name in WORKSPACES}
    with dg.instance_for_test() as instance:
        results = {name: run_job(two_workspaces, name, instance, day=DAY.isoformat())
                   for name in WORKSPACES}
        logs = [orjson.dumps(entry.to_json()).decode() for result in results.values()
                for entry in instance.all_logs(result.run_id)]
    for name, settings in WORKSPACES.items():
        result, server, root = results[name], stand_ins[name], tmp_path / "data" / name
        assert result.success, name
        # Each day exact: the raw file, the CSV and what reached Pigment are the day's events.
        assert sorted(raw_ids(root, DAY)) == truth[name]
        assert sorted(row["id"] for row in server.pushed_rows()) == truth[name]
        # The workspace's own keys, and only those, reached its host.
        assert set(server.authorizations) == {f"Bearer {settings['audit_key']}",
                                              f"Bearer {settings['import_key']}"}
        assert all(record.status != 401 for record in server.requests_log)
        # Its imports went to its own configuration, and its record says so.
        assert {record.configuration_id for record in server.imports} == {
            settings["configuration_id"]}
        record = orjson.loads(LocalStorage(root).import_record_path(DAY).read_bytes())
        assert {entry["configurationId"] for entry in record["imports"]} == {
            settings["configuration_id"]}
        # Materializations and checks are under the workspace's prefix, one per day each.
        assert {event.asset_key for event in result.get_asset_materialization_events()} == {
            dg.AssetKey([name, asset]) for asset in ASSET_NAMES}
        evaluations = result.get_asset_check_evaluations()
        assert {(e.asset_key.path[0], e.check_name) for e in evaluations} == {
            (name, check) for check in CHECK_NAMES}
        assert all(e.passed and e.partition == DAY.isoformat() for e in evaluations)
    other_keys = {"acme": WORKSPACES["globex"], "globex": WORKSPACES["acme"]}
    for name, other in other_keys.items():
        assert not any(other["audit_key"] in header or other["import_key"] in header
                       for header in stand_ins[name].authorizations)
    # The keys are nowhere in the runs' logs or metadata.
    assert not any(secret in line for secret in SECRETS for line in logs)


def test_a_backfill_of_one_workspace_leaves_the_other_alone(
        two_workspaces: dg.Definitions, stand_ins: dict[str, RecordingStandIn],
        tmp_path: Path) -> None:
    days = days_before(DAY, 3)
    for index, name in enumerate(WORKSPACES):
        for day in days:
            stand_ins[name].add_events(synthetic_events(day, 40, seed=day.toordinal() + index))
    with dg.instance_for_test() as instance:
        assert run_job(two_workspaces, "globex", instance, day=DAY.isoformat()).success
        globex_files = folder_state(tmp_path / "data" / "globex")
        globex_requests = dict(stand_ins["globex"].request_counts)
        globex_keys = [dg.AssetKey(["globex", asset]) for asset in ASSET_NAMES]
        before = {key: instance.get_materialized_partitions(key) for key in globex_keys}
        backfill = run_job(two_workspaces, "acme", instance, first=days[0].isoformat(),
                           last=days[-1].isoformat())
        assert backfill.success
        assert {event.partition for event in backfill.get_asset_materialization_events()} == {
            day.isoformat() for day in days}
        assert all(event.asset_key.path[0] == "acme"
                   for event in backfill.get_asset_materialization_events())
        # Nothing of globex moved: its files, its host, its materialized partitions.
        assert folder_state(tmp_path / "data" / "globex") == globex_files
        assert dict(stand_ins["globex"].request_counts) == globex_requests
        assert {key: instance.get_materialized_partitions(key)
                for key in globex_keys} == before == {key: {DAY.isoformat()}
                                                      for key in globex_keys}
    for day in days:
        assert sorted(raw_ids(tmp_path / "data" / "acme", day)) == sorted(
            event["id"] for event in stand_ins["acme"].visible_events(event_day=day))


def test_a_missing_key_fails_its_workspace_at_the_first_step_and_not_the_other(
        stand_ins: dict[str, RecordingStandIn], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    set_keys(monkeypatch, "globex")
    monkeypatch.setenv("ACME_AUDIT_KEY", WORKSPACES["acme"]["audit_key"])  # no import key
    module = unique_module()
    write_project(tmp_path / "project", module,
                  {name: attributes(name, stand_ins[name], tmp_path) for name in WORKSPACES})
    defs = load(tmp_path / "project", module, monkeypatch)
    for name in WORKSPACES:
        stand_ins[name].add_events(synthetic_events(DAY, 30, seed=len(name)))
    with dg.instance_for_test() as instance:
        failed = run_job(defs, "acme", instance, day=DAY.isoformat())
        succeeded = run_job(defs, "globex", instance, day=DAY.isoformat())
    assert not failed.success and succeeded.success
    failure = next(event for event in failed.all_events if event.is_step_failure)
    assert failure.step_key == "acme__raw_audit_events"  # the run's first step
    message = str(failure.step_failure_data.error)
    assert "import_key_env" in message and "ACME_IMPORT_KEY" in message
    assert f"{module}/defs/acme/defs.yaml" in message
    assert sum(stand_ins["acme"].request_counts.values()) == 0  # before any request
    assert len(stand_ins["globex"].pushed_rows()) == 30


@pytest.mark.parametrize("case", ["wrong-key", "key-with-newline", "other-zone", "storage"])
def test_a_workspace_error_names_its_yaml_field_not_an_environment_variable(
        case: str, stand_ins: dict[str, RecordingStandIn], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    set_keys(monkeypatch, *WORKSPACES)
    workspaces = {name: attributes(name, stand_ins[name], tmp_path) for name in WORKSPACES}
    field, variable = {"wrong-key": ("audit_key_env (ACME_AUDIT_KEY)", "PIGMENT_AUDIT_API_KEY"),
                       "key-with-newline": ("audit_key_env (ACME_AUDIT_KEY)",
                                            "PIGMENT_AUDIT_API_KEY"),
                       "other-zone": ("timezone", "PIGMENT_AUDIT_TIMEZONE"),
                       "storage": ("storage_url", "PIGMENT_AUDIT_STORAGE_URL")}[case]
    if case == "wrong-key":
        monkeypatch.setenv("ACME_AUDIT_KEY", "not-the-key")
    elif case == "key-with-newline":
        monkeypatch.setenv("ACME_AUDIT_KEY", WORKSPACES["acme"]["audit_key"] + "\n")
    elif case == "other-zone":  # the stored days are of another zone than the YAML's
        LocalStorage(tmp_path / "data" / "acme").write_bytes(
            "pigment_audit.json", orjson.dumps({"version": 1, "timezone": "Europe/Paris"}))
    else:  # a file where the folder should be
        (tmp_path / "not-a-folder").write_bytes(b"")
        workspaces["acme"]["storage_url"] = str(tmp_path / "not-a-folder")
    module = unique_module()
    write_project(tmp_path / "project", module, workspaces)
    defs = load(tmp_path / "project", module, monkeypatch)
    stand_ins["acme"].add_events(synthetic_events(DAY, 5, seed=1))
    with dg.instance_for_test() as instance:
        failed = run_job(defs, "acme", instance, day=DAY.isoformat())
    assert not failed.success
    failure = next(event for event in failed.all_events if event.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert f"{module}/defs/acme/defs.yaml: {field}" in message
    assert variable not in message  # a variable this workspace does not read
    assert WORKSPACES["acme"]["audit_key"] not in message and "not-the-key" not in message


# --- dg -------------------------------------------------------------------------------------

def test_dg_check_and_list_defs_on_two_workspaces(stand_ins: dict[str, RecordingStandIn],
                                                  tmp_path: Path) -> None:
    module = unique_module()
    project = write_project(tmp_path / "project", module, {
        name: attributes(name, stand_ins[name], tmp_path) for name in WORKSPACES})
    checked = run_dg(["check", "defs"], project, tmp_path / "home")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully." in checked.stdout
    listed = run_dg(["list", "defs", "--json"], project, tmp_path / "home")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert {asset["asset_key"] for asset in found["assets"]} == {
        f"{name}/{asset}" for name in WORKSPACES for asset in ASSET_NAMES}
    assert {asset["group_name"] for asset in found["assets"]} == set(WORKSPACES)
    assert {job["name"] for job in found["jobs"]} == {f"{name}_pigment_audit_job"
                                                      for name in WORKSPACES}
    assert {schedule["name"] for schedule in found["schedules"]} == {
        f"{name}_pigment_audit_daily" for name in WORKSPACES}
    assert {resource["name"] for resource in found["resources"]} == {
        f"pigment_{name}" for name in WORKSPACES}
    assert len(found["asset_checks"]) == 4 * len(WORKSPACES)
    assert not any(secret in listed.stdout for secret in SECRETS)


def _bad_yaml(case: str, tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    """The workspaces of a bad project, the field the message must name, the file it names."""
    acme = {"name": "acme", "audit_key_env": "ACME_AUDIT_KEY",
            "import_key_env": "ACME_IMPORT_KEY", "storage_url": str(tmp_path / "a")}
    other = {**acme, "name": "globex", "storage_url": str(tmp_path / "b")}
    if case == "unknown field":
        return {"acme": {**acme, "audit_api_key": "not-a-key"}}, "audit_api_key", "acme"
    if case == "missing name":
        return {"acme": {k: v for k, v in acme.items() if k != "name"}}, "'name'", "acme"
    if case == "same name":
        return {"acme": acme, "zeta": {**other, "name": "acme"}}, "name", "zeta"
    if case == "same storage":
        return ({"acme": acme, "zeta": {**other, "storage_url": acme["storage_url"]}},
                "storage_url", "zeta")
    if case == "bad zone":
        return {"acme": {**acme, "timezone": "Mars/Olympus"}}, "timezone", "acme"
    if case == "first day not in the past":
        return ({"acme": {**acme, "first_partition": TODAY.isoformat()}}, "first_partition",
                "acme")
    if case == "key instead of a variable name":
        return ({"acme": {**acme, "audit_key_env": "sk-live 1234"}}, "audit_key_env", "acme")
    if case == "key that YAML reads as a number":
        return ({"acme": {**acme, "import_key_env": 7301945512338841}}, "import_key_env", "acme")
    if case == "key that a template gives as a number":  # PASTED_VARIABLE is set by the test
        return ({"acme": {**acme, "audit_key_env": "{{ env.PASTED_VARIABLE }}"}},
                "audit_key_env", "acme")
    # Dagster re-raises its YAML model's errors with the value written: a key under a misspelt
    # field, or in any other field, was quoted by the refusal.
    if case == "key under a misspelt field":
        return {"acme": {**acme, "audit_api_key": "sk-live 1234"}}, "audit_api_key", "acme"
    if case == "missing name, a key in another field":
        return ({"acme": {**{k: v for k, v in acme.items() if k != "name"},
                          "import_configuration_id": "sk-live 1234"}}, "name", "acme")
    if case == "key in a number field":
        return {"acme": {**acme, "schedule_hour": "sk-live 1234"}}, "schedule_hour", "acme"
    if case == "number in a text field":
        return ({"acme": {**acme, "import_configuration_id": 7301945512338841}},
                "import_configuration_id", "acme")
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unknown field", "missing name", "same name", "same storage",
                                  "bad zone", "first day not in the past",
                                  "key instead of a variable name",
                                  "key that YAML reads as a number",
                                  "key that a template gives as a number",
                                  "key under a misspelt field",
                                  "missing name, a key in another field",
                                  "key in a number field", "number in a text field"])
def test_dg_check_defs_names_the_field_and_the_file(case: str, tmp_path: Path) -> None:
    workspaces, field, folder = _bad_yaml(case, tmp_path)
    module = unique_module()
    project = write_project(tmp_path / "project", module, workspaces)
    checked = run_dg(["check", "defs"], project, tmp_path / "home",
                     PASTED_VARIABLE="7301945512338841")
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, output
    assert field in output
    # A key pasted as a variable name is never shown.
    assert "sk-live 1234" not in output and "7301945512338841" not in output
    assert f"{module}/defs/{folder}/defs.yaml" in output
    assert "All definitions loaded successfully." not in output


@pytest.mark.parametrize("case", ["key under a misspelt field",
                                  "missing name, a key in another field",
                                  "key in a number field", "number in a text field"])
def test_a_code_location_that_fails_to_load_does_not_quote_a_key(case: str,
                                                                   tmp_path: Path) -> None:
    """What the webserver shows of a code location that fails to load (``dagster definitions
    validate`` prints the same error): the field and the file, never the value written."""
    workspaces, field, folder = _bad_yaml(case, tmp_path)
    module = unique_module()
    project = write_project(tmp_path / "project", module, workspaces)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    loaded = subprocess.run(
        [str(DG.with_name("dagster")), "definitions", "validate", "--verbose",
         "-m", f"{module}.definitions"], cwd=project, capture_output=True, text=True,
        timeout=300, env=clean_env(DAGSTER_HOME=str(home), PYTHONPATH=str(project)))
    output = loaded.stdout + loaded.stderr
    assert "sk-live 1234" not in output and "7301945512338841" not in output
    assert "Validation for 1 code locations failed" in output, output
    assert f"{module}/defs/{folder}/defs.yaml: {field}" in output


def test_a_workspace_built_in_python_does_not_quote_a_value_it_refuses() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        PigmentAuditComponent(name="acme", audit_key_env="ACME_AUDIT_KEY",
                              import_key_env="ACME_IMPORT_KEY", schedule_hour="sk-live 1234")
    assert "schedule_hour" in str(refused.value)
    assert "sk-live 1234" not in str(refused.value)


def _workspaces_on(first: str, second: str) -> tuple[PigmentAuditComponent, ...]:
    """Workspaces acme and globex, their files at ``first`` and ``second``."""
    return tuple(PigmentAuditComponent(name=name, audit_key_env=f"{name.upper()}_AUDIT_KEY",
                                       import_key_env=f"{name.upper()}_IMPORT_KEY",
                                       storage_url=url)
                 for name, url in (("acme", first), ("globex", second)))


@pytest.mark.parametrize(("first", "second"), [
    ("s3://bucket/audit", "s3a://bucket/audit"),  # two names of S3
    ("s3a://bucket/audit", "s3://bucket/audit/acme"),  # and one inside the other
    ("S3://bucket/audit", "s3://bucket/audit/"),
    ("az://container/audit", "abfs://container/audit"),  # four names of Azure Blob Storage
    ("abfss://container/audit", "azure://container/audit"),
    ("az://container/audit", "abfss://container@account.dfs.core.windows.net/audit/acme"),
])
def test_one_bucket_under_two_scheme_names_is_refused(
        first: str, second: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``s3a://`` reaches the objects ``s3://`` does (and ``abfs://`` those of ``az://``):
    two workspaces on them would share files, leases and the watermark."""
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_REGION": "us-east-1", "AZURE_STORAGE_ACCOUNT_NAME": "account",
                        "AZURE_STORAGE_ACCOUNT_KEY": "a2V5"}.items():
        monkeypatch.setenv(name, value)
    acme, globex = _workspaces_on(first, second)
    with pytest.raises(WorkspaceConfigError, match="storage_url") as refused:
        check_distinct([acme, globex])
    assert first in str(refused.value) and second in str(refused.value)
    check_distinct([acme, PigmentAuditComponent(  # another bucket of the same store is fine
        name="globex", audit_key_env="G_AUDIT_KEY", import_key_env="G_IMPORT_KEY",
        storage_url=second.replace("bucket", "other").replace("container", "other"))])


@pytest.mark.parametrize(("first", "second", "environment_account", "refused"), [
    # Two accounts, one container name each: two stores (a production and a sandbox account).
    ("abfss://pigment@prodacct.dfs.core.windows.net/audit",
     "abfss://pigment@sandboxacct.dfs.core.windows.net/audit", "prodacct", False),
    # The bare form is the environment's account: the same store as the account form...
    ("az://pigment/audit", "abfss://pigment@prodacct.dfs.core.windows.net/audit/acme",
     "prodacct", True),
    # ...or another one.
    ("az://pigment/audit", "abfss://pigment@sandboxacct.dfs.core.windows.net/audit",
     "prodacct", False),
])
def test_azure_storage_is_told_apart_by_account_and_container(
        first: str, second: str, environment_account: str, refused: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", environment_account)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    acme, globex = _workspaces_on(first, second)
    if refused:
        with pytest.raises(WorkspaceConfigError, match="storage_url"):
            check_distinct([acme, globex])
    else:
        check_distinct([acme, globex])


def test_this_project_without_yaml_keeps_todays_definitions(tmp_path: Path) -> None:
    assert not list((ROOT / "pigment_audit_assets" / "defs").glob("*/defs.yaml"))
    checked = run_dg(["check", "defs"], ROOT, tmp_path / "home")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = run_dg(["list", "defs", "--json"], ROOT, tmp_path / "home")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert {asset["asset_key"] for asset in found["assets"]} == set(ASSET_NAMES)
    assert {asset["group_name"] for asset in found["assets"]} == {"pigment_audit"}
    assert [job["name"] for job in found["jobs"]] == ["pigment_audit_job"]
    assert [schedule["name"] for schedule in found["schedules"]] == ["pigment_audit_daily"]
    assert [resource["name"] for resource in found["resources"]] == ["pigment"]


def test_the_scaffolded_yaml_loads_and_materializes(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique_module()
    project = write_project(tmp_path / "project", module)
    with PigmentStandIn(audit_key="scaffold-audit-key", import_key="scaffold-import-key",
                        configuration_ids=("scaffold-configuration",), page_size=100,
                        now=STAND_IN_NOW) as server:
        scaffolded = run_dg(
            ["scaffold", "defs", "PigmentAuditComponent", "acme",
             "--import-configuration-id", "scaffold-configuration",
             "--base-url", server.base_url, "--storage-url", str(tmp_path / "data")],
            project, tmp_path / "home", input_text="y\n")
        assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
        text = (project / module / "defs" / "acme" / "defs.yaml").read_text()
        assert "audit_key_env: ACME_PIGMENT_AUDIT_API_KEY" in text
        checked = run_dg(["check", "defs"], project, tmp_path / "home")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        monkeypatch.setenv("ACME_PIGMENT_AUDIT_API_KEY", "scaffold-audit-key")
        monkeypatch.setenv("ACME_PIGMENT_IMPORT_API_KEY", "scaffold-import-key")
        server.add_events(synthetic_events(DAY, 60, seed=12))
        defs = load(project, module, monkeypatch)
        with dg.instance_for_test() as instance:
            result = run_job(defs, "acme", instance, day=DAY.isoformat())
        assert result.success
        truth = sorted(event["id"] for event in server.visible_events(event_day=DAY))
        assert sorted(raw_ids(tmp_path / "data", DAY)) == truth
        assert sorted(row["id"] for row in server.pushed_rows()) == truth


def test_no_yaml_falls_back_to_the_environment_workspace(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A defs folder without workspaces gives today's single workspace; one YAML replaces it."""
    module = unique_module()
    project = write_project(tmp_path / "project", module)
    defs = load(project, module, monkeypatch)
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == set(ASSET_NAMES)
    assert defs.resolve_job_def("pigment_audit_job").name == "pigment_audit_job"
    assert defs.resolve_schedule_def("pigment_audit_daily").name == "pigment_audit_daily"
    assert set(defs.resources or {}) == {"pigment"}
    other = unique_module()
    project = write_project(tmp_path / "other", other)
    write_workspace(project, other, "acme",
                    {"name": "acme", "audit_key_env": "A_KEY", "import_key_env": "B_KEY"})
    defs = load(project, other, monkeypatch)
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {
        f"acme/{asset}" for asset in ASSET_NAMES}


@pytest.mark.slow
def test_the_demo_shows_two_workspaces(tmp_path: Path) -> None:
    """``scripts/demo.py --workspaces 2``: two stand-ins, the YAML of two workspaces, the UI."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = clean_env(PIGMENT_AUDIT_VENV=sys.prefix)
    environment = {key: value for key, value in environment.items()
                   if not key.startswith("DAGSTER_")}
    done = subprocess.run([sys.executable, "scripts/demo.py", "--smoke", "--workspaces", "2",
                           "--port", str(port)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert console.count("Pigment stand-in ready at http://127.0.0.1:") == 2
    assert f"Dagster UI: http://127.0.0.1:{port}" in done.stdout
    for noise in ("BetaWarning", "PreviewWarning", "DeprecationWarning"):
        assert noise not in console, noise
    project = ROOT / ".demo" / "workspaces"
    for name in ("acme", "globex"):
        text = (project / "pigment_audit_demo" / "defs" / name / "defs.yaml").read_text()
        assert f"{name.upper()}_PIGMENT_AUDIT_API_KEY" in text and "demo-" not in text
    listed = run_dg(["list", "defs", "--json"], project, tmp_path / "home")
    assert listed.returncode == 0, listed.stderr
    assert {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]} == {
        f"{name}/{asset}" for name in ("acme", "globex") for asset in ASSET_NAMES}


def test_dg_launch_materializes_one_workspace_a_day_and_a_range(
        stand_ins: dict[str, RecordingStandIn], tmp_path: Path) -> None:
    """The README's ``dg launch --assets ... --partition`` (and ``--partition-range``)."""
    module = unique_module()
    project = write_project(tmp_path / "project", module, {
        name: attributes(name, stand_ins[name], tmp_path) for name in WORKSPACES})
    days = days_before(DAY, 3)
    for day in days:
        stand_ins["acme"].add_events(synthetic_events(day, 25, seed=day.toordinal()))
    keys = {"ACME_AUDIT_KEY": WORKSPACES["acme"]["audit_key"],
            "ACME_IMPORT_KEY": WORKSPACES["acme"]["import_key"]}
    launched = run_dg(["launch", "--assets", "group:acme", "--partition", DAY.isoformat()],
                      project, tmp_path / "home", **keys)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert sorted(raw_ids(tmp_path / "data" / "acme", DAY)) == sorted(
        event["id"] for event in stand_ins["acme"].visible_events(event_day=DAY))
    ranged = run_dg(["launch", "--assets", "group:acme", "--partition-range",
                     f"{days[0].isoformat()}...{days[-1].isoformat()}"],
                    project, tmp_path / "home", **keys)
    assert ranged.returncode == 0, ranged.stdout[-3000:] + ranged.stderr[-3000:]
    assert sorted(row["id"] for row in stand_ins["acme"].pushed_rows()) == sorted(
        event["id"] for day in days for event in stand_ins["acme"].visible_events(event_day=day))
    assert sum(stand_ins["globex"].request_counts.values()) == 0
    assert not any(secret in launched.stdout + launched.stderr + ranged.stdout + ranged.stderr
                   for secret in SECRETS)


def test_the_readme_documents_every_field_and_the_dg_commands() -> None:
    from pigment_audit_assets.defs.component import PigmentAuditComponent

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Several workspaces"):]
    section = section[:section.index("\n## ", 1)]
    for field in PigmentAuditComponent.model_fields:
        assert f"| `{field}` |" in section, field
    for text in ("dg check defs", "dg list defs", "dg dev", "dg launch --assets",
                 "--partition ", "dagster asset materialize", "`pigment_api`",
                 "dg scaffold defs PigmentAuditComponent", "--workspaces 2"):
        assert text in section, text


def test_each_workspace_has_its_own_schedule_on_its_own_job(
        two_workspaces: dg.Definitions) -> None:
    run_at = datetime.combine(TODAY, time(5), tzinfo=timezone.utc)
    for name in WORKSPACES:
        schedule = two_workspaces.resolve_schedule_def(f"{name}_pigment_audit_daily")
        assert schedule.job_name == f"{name}_pigment_audit_job"
        assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 5 * * *", "UTC")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        request = schedule(dg.build_schedule_context(scheduled_execution_time=run_at))
        assert isinstance(request, dg.RunRequest)
        # lookback_days: 2 in the YAML: yesterday and the day before, re-scanned in full.
        assert (request.tags[ASSET_PARTITION_RANGE_START_TAG],
                request.tags[ASSET_PARTITION_RANGE_END_TAG]) == (
            (TODAY - timedelta(days=2)).isoformat(), (TODAY - timedelta(days=1)).isoformat())


@pytest.mark.parametrize(("variable", "shown"), [("ACME_AUDIT_KEY", True),
                                                 ("sk_live_9fQ2xV7LmZ", False),
                                                 ("AbC123xYz", False)])
def test_a_key_variable_s_name_is_shown_only_when_written_as_names_are(
        variable: str, shown: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key pasted where its variable's name belongs (audit_key_env: sk_live_...) is a valid
    name that is not set: the error must not print it, in the UI and the run's logs."""
    monkeypatch.delenv(variable, raising=False)
    resource = WorkspacePigmentResource(workspace="acme", source="defs/acme/defs.yaml",
                                        audit_key_env=variable, import_key_env="B_KEY")
    with pytest.raises(ConfigError) as raised:
        resource.check_settings(fetch=True)
    message = str(raised.value)
    assert "audit_key_env" in message and "defs/acme/defs.yaml" in message
    assert (variable in message) is shown
    assert (variable in resource.setting_names()["audit"]) is shown


def test_a_key_pasted_as_a_variable_name_stays_out_of_the_resource_s_config() -> None:
    """The resource's config shows in the UI: an unconventional variable name, which may be a
    key, does not go into it (the key itself comes from the environment, as an EnvVar)."""
    pasted = "sk_live_9fQ2xV7LmZ"
    resource = PigmentAuditComponent(name="acme", audit_key_env=pasted,
                                     import_key_env="ACME_IMPORT_KEY").build_resource()
    assert pasted not in repr(resource.data)
    assert "ACME_IMPORT_KEY" in repr(resource.data)
