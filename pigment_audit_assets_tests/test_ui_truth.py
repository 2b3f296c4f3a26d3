"""What a user reads must be true: texts the UI renders, per-day metadata and checks, messages.

Materializations run for real (``dagster.materialize``) against the stand-in on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import orjson
import pytest
import yaml
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)

from pigment_audit_assets.core.errors import PigmentApiError
from pigment_audit_assets.core.imports import save_record
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.defs import checks
from pigment_audit_assets.defs.assets import ImportConfig
from pigment_audit_assets.defs.resources import PigmentResource
from pigment_audit_assets_tests.conftest import (
    ASSETS,
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    IMPORT_KEY,
    STAND_IN_NOW,
    days_before,
    make_client,
    resource_settings,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

ROOT = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).parent / "pigment-audit"
NODES = ("raw_audit_events", "audit_events_csv", "audit_events_import")
# What only a whole run knows; never on one day's materialization.
RUN_WIDE = {"api_requests", "pages", "events_seen", "duplicates_dropped", "events_outside_days",
            "days", "days_changed", "rows_written", "imports"}
TAG = re.compile(r"<[A-Za-z/][^>]*>")


def bare_tags(text: str) -> list[str]:
    """Tag-like ``<word>`` outside Markdown code spans: the UI's renderer drops them."""
    return TAG.findall(re.sub(r"`[^`]*`", "", text))


def values(materialization: Any) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def by_day(result: dg.ExecuteInJobResult, node: str) -> dict[str, dict[str, Any]]:
    return {m.partition: values(m) for m in result.asset_materializations_for_node(node)}


def checks_by_day(result: dg.ExecuteInJobResult) -> dict[str, dict[str, dg.AssetCheckEvaluation]]:
    found: dict[str, dict[str, dg.AssetCheckEvaluation]] = {}
    for evaluation in result.get_asset_check_evaluations():
        found.setdefault(evaluation.check_name, {})[evaluation.partition] = evaluation
    return found


def materialize(resource: Any, *, day: str | None = None, first: str | None = None,
                last: str | None = None, **options: Any) -> dg.ExecuteInJobResult:
    tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last} \
        if first and last else {}
    return dg.materialize(ASSETS, resources={"pigment": resource}, partition_key=day,
                          tags={**tags, **options.pop("tags", {})}, **options)


# --- texts the UI renders -------------------------------------------------------------------

def test_no_text_the_ui_renders_holds_a_placeholder_the_markdown_would_eat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pigment_audit_assets.definitions import build_definitions

    monkeypatch.delenv("PIGMENT_AUDIT_START_DATE", raising=False)
    defs = build_definitions()
    texts: dict[str, str] = {}
    for assets_def in defs.assets or []:
        assert isinstance(assets_def, dg.AssetsDefinition)
        for key, description in assets_def.descriptions_by_key.items():
            texts[f"asset {key.to_user_string()}"] = description or ""
        for spec in assets_def.check_specs:
            texts[f"check {spec.name}"] = spec.description or ""
    for schedule in defs.schedules or []:
        texts[f"schedule {schedule.name}"] = schedule.description or ""
    for job in defs.jobs or []:
        texts[f"job {job.name}"] = job.description or ""
    for model in (PigmentResource, ImportConfig):
        for name, field in model.model_fields.items():
            texts[f"{model.__name__}.{name}"] = field.description or ""
    assert len([name for name in texts if name.startswith("asset ")]) == 3
    assert all(texts[f"asset {node}"] for node in NODES)
    assert {name: bare_tags(text) for name, text in texts.items() if bare_tags(text)} == {}
    # The paths are still there, as code.
    assert "`raw/YYYY-MM-DD.jsonl`" in texts["asset raw_audit_events"]


def test_the_tag_finder_finds_what_the_renderer_eats() -> None:
    assert bare_tags("files: raw/<day>.jsonl and csv/<day>.csv") == ["<day>", "<day>"]
    assert bare_tags("files: `raw/<day>.jsonl`, a < b > c") == []


# --- per-day metadata and checks ------------------------------------------------------------

def test_each_days_materialization_and_checks_are_about_that_day(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    days = days_before(DAY, 3)
    sizes = dict(zip(days, (60, 90, 120), strict=True))
    for day, size in sizes.items():
        stand_in.add_events(synthetic_events(day, size, seed=day.toordinal()))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize(resource, first=days[0].isoformat(), last=days[-1].isoformat(),
                             instance=instance)
        assert result.success
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    keys = [day.isoformat() for day in days]
    raw, csv_meta, pushed = (by_day(result, node) for node in NODES)
    assert sorted(raw) == sorted(csv_meta) == sorted(pushed) == keys
    imports_by_day = Counter()
    for day, size in sizes.items():
        key = day.isoformat()
        truth = len(stand_in.visible_events(event_day=day))
        assert truth == size
        for meta in (raw[key], csv_meta[key], pushed[key]):
            assert meta["dagster/row_count"] == size
            assert not RUN_WIDE & set(meta), RUN_WIDE & set(meta)
        assert sum(raw[key]["events_by_type"].values()) == size
        assert raw[key]["first_event_at"].startswith(key)
        assert pushed[key]["rows_pushed"] == pushed[key]["inserted"] == size
        record = orjson.loads(LocalStorage(tmp_path).import_record_path(day).read_bytes())
        assert pushed[key]["import_ids"] == [entry["importId"] for entry in record["imports"]]
        assert pushed[key]["chunks_pushed"] == len(record["imports"])
        imports_by_day[key] = len(record["imports"])
    assert sum(imports_by_day.values()) == len(stand_in.imports)
    # The run-wide figures are in the run's logs.
    requests = stand_in.request_counts["audit"]
    assert any(line.startswith(f"This run's audit scan, for its 3 day(s): {requests} API "
                               "request(s)") for line in logs)
    assert f"This run wrote {sum(sizes.values()):,} CSV row(s) over 3 day(s)." in logs
    # Each check gives each day its own result, on its partition, about that day.
    found = checks_by_day(result)
    assert set(found) == {checks.RAW_IDS_AND_DAYS, checks.RAW_REJECTED, checks.CSV_ROWS,
                          checks.IMPORT_REPORTS}
    for name, evaluations in found.items():
        assert sorted(evaluations) == keys, name
        for key, evaluation in evaluations.items():
            assert evaluation.passed and evaluation.metadata["day"].value == key, name
            assert evaluation.target_materialization_data is not None, name
    for day, size in sizes.items():
        key = day.isoformat()
        assert found[checks.RAW_IDS_AND_DAYS][key].metadata["events_checked"].value == size
        assert found[checks.CSV_ROWS][key].metadata["csv_rows"].value == size
        assert found[checks.IMPORT_REPORTS][key].metadata["imports_checked"].value == \
            imports_by_day[key]


def test_a_day_whose_check_fails_fails_alone(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """A raw file holding an event of another day fails that day's check, not its neighbours'."""
    days = days_before(DAY, 3)
    for day in days:
        stand_in.add_events(synthetic_events(day, 20, seed=day.toordinal()))
    storage = LocalStorage(tmp_path)
    path = storage.raw_path(days[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(synthetic_events(days[0], 1, seed=77)[0]) + b"\n")
    result = materialize(PigmentResource(**resource_settings(stand_in, tmp_path)),
                         first=days[0].isoformat(), last=days[-1].isoformat(),
                         raise_on_error=False)
    assert not result.success  # a blocking check failed: the CSV step did not run
    evaluations = checks_by_day(result)[checks.RAW_IDS_AND_DAYS]
    assert {key: evaluation.passed for key, evaluation in evaluations.items()} == {
        days[0].isoformat(): True, days[1].isoformat(): False, days[2].isoformat(): True}
    failed = evaluations[days[1].isoformat()]
    assert f"event of {days[0]}" in failed.metadata["first_problems"].value
    assert days[1].isoformat() in (failed.description or "")


def test_the_import_row_count_is_the_days_events_in_pigment(stand_in: PigmentStandIn,
                                                            tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 70, seed=12))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path))
    materialize(resource, day=DAY.isoformat())
    again = by_day(materialize(resource, day=DAY.isoformat()), "audit_events_import")
    meta = again[DAY.isoformat()]
    assert (meta["rows_pushed"], meta["events_already_in_pigment"]) == (0, 70)
    assert meta["dagster/row_count"] == 70


# --- a check that cannot verify does not pass -----------------------------------------------

def test_an_import_pigment_no_longer_knows_is_not_verified(stand_in: PigmentStandIn,
                                                           tmp_path: Path) -> None:
    events = synthetic_events(DAY, 12, seed=41)
    stand_in.add_events(events)
    storage = LocalStorage(tmp_path)
    # An earlier run pushed three events as an import whose status Pigment no longer has.
    save_record(storage, DAY, {"day": DAY.isoformat(), "imports": [
        {"importId": "forgotten-import", "configurationId": CONFIGURATION_ID, "chunk": 1,
         "rows": 3, "bytes": 10, "status": "Pushed",
         "eventIds": [event["id"] for event in events[:3]]}]})
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
    result = materialize(resource, day=DAY.isoformat())
    assert result.success  # a warning, not a failure: its events count as pushed
    check = checks_by_day(result)[checks.IMPORT_REPORTS][DAY.isoformat()]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "could not be verified" in (check.description or "")
    assert "forgotten-import" in (check.description or "")
    assert check.metadata["not_verified"].value == {"forgotten-import": "StatusUnknown"}
    assert bare_tags(check.description or "") == []
    # A forced full re-push puts every event in a completed import: verified again.
    forced = materialize(resource, day=DAY.isoformat(), run_config={
        "ops": {"audit_events_import": {"config": {"force_full_repush": True}}}})
    check = checks_by_day(forced)[checks.IMPORT_REPORTS][DAY.isoformat()]
    assert check.passed and check.description is None


def import_check(result: dg.ExecuteInJobResult) -> dg.AssetCheckEvaluation:
    return checks_by_day(result)[checks.IMPORT_REPORTS][DAY.isoformat()]


def test_rows_pigment_skipped_are_not_counted_in_pigment_until_a_full_repush(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """A Completed import that skipped rows: the check warns, with Pigment's reason, and the
    row count leaves them out, on this run and on a re-run with nothing new to push."""
    stand_in.add_events(synthetic_events(DAY, 30, seed=5))
    stand_in.complete_next_import_partly(skipped=5, reason="Member not found")
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
    for run in range(2):
        result = materialize(resource, day=DAY.isoformat())
        check = import_check(result)
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, run
        assert "skipped 5 of 30 rows (Member not found: 5)" in (check.description or "")
        assert by_day(result, "audit_events_import")[DAY.isoformat()]["dagster/row_count"] == 25
    assert len(stand_in.imports) == 1  # the re-run pushed nothing
    forced = materialize(resource, day=DAY.isoformat(), run_config={
        "ops": {"audit_events_import": {"config": {"force_full_repush": True}}}})
    assert import_check(forced).passed
    assert by_day(forced, "audit_events_import")[DAY.isoformat()]["dagster/row_count"] == 30


def test_an_import_that_fell_short_stays_failed_on_a_rerun(stand_in: PigmentStandIn,
                                                          tmp_path: Path) -> None:
    """Before, the check looked at the run's own imports only: a re-run with nothing to push
    turned the day green while 2 of its rows were in no report."""
    stand_in.add_events(synthetic_events(DAY, 30, seed=6))
    stand_in.complete_next_import_partly(unreported=2)
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
    for run in range(2):
        result = materialize(resource, day=DAY.isoformat(), raise_on_error=False)
        check = import_check(result)
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR, run
        assert list(check.metadata["short"].value.values()) == [
            {"rows_pushed": 30, "accounted_for": 28}]
        assert by_day(result, "audit_events_import")[DAY.isoformat()]["dagster/row_count"] == 28


def test_a_push_whose_answer_was_lost_keeps_warning_on_a_rerun(stand_in: PigmentStandIn,
                                                              tmp_path: Path) -> None:
    stand_in.add_events(synthetic_events(DAY, 30, seed=7))
    stand_in.inject(Fault("truncate", endpoint="push"))
    resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
    for run in range(2):
        check = import_check(materialize(resource, day=DAY.isoformat()))
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, run
        assert f"{DAY} chunk 1 (30 rows)" in (check.description or ""), run


def test_an_import_an_earlier_run_left_open_is_followed_not_claimed(tmp_path: Path) -> None:
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100, now=STAND_IN_NOW,
                        status_polls_in_progress=10**6) as stand_in:
        stand_in.add_events(synthetic_events(DAY, 30, seed=8))
        impatient = PigmentResource(**resource_settings(
            stand_in, tmp_path, chunk_size_mb=1, import_poll_timeout_seconds=0.2))
        assert not materialize(impatient, day=DAY.isoformat(), raise_on_error=False).success
        stand_in.status_polls_in_progress = 0
        resource = PigmentResource(**resource_settings(stand_in, tmp_path, chunk_size_mb=1))
        with dg.DagsterInstance.ephemeral() as instance:
            result = materialize(resource, day=DAY.isoformat(), instance=instance)
            meta = by_day(result, "audit_events_import")[DAY.isoformat()]
            assert meta["import_ids"] == [] and meta["chunks_pushed"] == 0
            assert meta["imports_followed"] == [stand_in.imports[0].import_id]
            assert meta["inserted"] == 30 and meta["dagster/row_count"] == 30
            assert any(entry.user_message.startswith("This run pushed 0 row(s) in 0 import(s)")
                       for entry in instance.all_logs(result.run_id))
        assert len(stand_in.imports) == 1


# --- the launchpad's resource config --------------------------------------------------------

def test_run_config_of_one_field_keeps_the_environments_settings(
        stand_in: PigmentStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pigment_audit_assets.definitions import build_resource

    for variable, value in {"PIGMENT_AUDIT_API_KEY": AUDIT_KEY,
                            "PIGMENT_IMPORT_API_KEY": IMPORT_KEY,
                            "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
                            "PIGMENT_BASE_URL": stand_in.base_url,
                            "PIGMENT_AUDIT_STORAGE_URL": str(tmp_path / "store"),
                            "PIGMENT_AUDIT_TIMEZONE": "UTC"}.items():
        monkeypatch.setenv(variable, value)
    stand_in.add_events(synthetic_events(DAY, 80, seed=13))
    monkeypatch.chdir(tmp_path)  # the default storage folder would land here
    result = materialize(build_resource(), day=DAY.isoformat(), run_config={
        "resources": {"pigment": {"config": {"chunk_size_mb": 0.01}}}})
    assert result.success
    storage = LocalStorage(tmp_path / "store")
    assert storage.csv_path(DAY).exists() and not (tmp_path / "pigment_audit_data").exists()
    assert len(stand_in.pushed_rows()) == 80
    assert len(stand_in.imports) > 2  # 0.01 MB chunks: the one field set did apply
    assert {record.configuration_id for record in stand_in.imports} == {CONFIGURATION_ID}
    # And what the launchpad shows as defaults names the variables, never a key's value.
    schema = build_resource().get_resource_definition().config_schema.config_type
    defaults = {name: field.default_value for name, field in schema.fields.items()
                if field.default_provided}
    assert defaults["audit_api_key"] == {"env": "PIGMENT_AUDIT_API_KEY"}
    assert defaults["storage_url"] == {"env": "PIGMENT_AUDIT_STORAGE_URL"}
    assert AUDIT_KEY not in str(defaults) and IMPORT_KEY not in str(defaults)


# --- messages -------------------------------------------------------------------------------

def test_pigments_400_on_a_push_names_the_chunk_size_settings(stand_in: PigmentStandIn,
                                                              tmp_path: Path) -> None:
    stand_in.max_push_bytes = 10
    csv_path = tmp_path / "day.csv"
    csv_path.write_bytes(b"id,eventType\r\n" + b"".join(
        f"event-{number},Login\r\n".encode() for number in range(20)))
    with pytest.raises(PigmentApiError) as raised:
        make_client(stand_in).push_csv(CONFIGURATION_ID, csv_path)
    assert raised.value.status == 400
    assert "chunk_size_mb" in str(raised.value) and "--chunk-size" in str(raised.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PIGMENT_")}
    environment["PIGMENT_AUDIT_API_KEY"] = AUDIT_KEY
    # Nothing listens on port 9 of 127.0.0.1: bad arguments must fail before any request.
    environment["PIGMENT_BASE_URL"] = "http://127.0.0.1:9"
    return subprocess.run([str(COMMAND), *args], env=environment, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("--start-date", "2026-11-02", "--end-date", "2026-11-01"),
    ("--start-date", "2026-11-01", "--end-date", "2026-11-01", "--chunk-size", "nan"),
    ("--start-date", "2026-11-01", "--end-date", "2026-11-01", "--chunk-size", "inf"),
    ("--start-date", "2026-11-01", "--end-date", "2026-11-01", "--chunk-size", "-inf"),
])
def test_bad_arguments_exit_2_with_a_message_not_a_traceback(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "pigment-audit: error:" in done.stderr
    assert ("--end-date" if "nan" not in args and "inf" not in args[-1] else "--chunk-size") \
        in done.stderr.splitlines()[-1]


def test_help_names_the_environment_the_command_reads() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for variable in ("PIGMENT_AUDIT_API_KEY", "PIGMENT_IMPORT_API_KEY", "PIGMENT_BASE_URL",
                     "PIGMENT_AUDIT_TIMEZONE"):
        assert variable in done.stdout, variable


# --- names and notices ----------------------------------------------------------------------

def test_the_code_location_has_one_name() -> None:
    section = (ROOT / "pyproject.toml").read_text().split("[tool.dagster]")[1].split("\n[")[0]
    pyproject = dict(re.findall(r'^(\w+) = "([^"]*)"$', section, re.MULTILINE))
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["python_module"]["module_name"] == pyproject["module_name"]
    assert location["python_module"]["location_name"] == pyproject["code_location_name"] == \
        "pigment_audit_assets"


def test_loading_the_definitions_shows_none_of_dagsters_notices_about_our_choices() -> None:
    program = ("import warnings; warnings.simplefilter('always'); "
               "import pigment_audit_assets.definitions")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PIGMENT_", "DAGSTER_"))}
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BetaWarning" not in done.stderr and "PreviewWarning" not in done.stderr, done.stderr


def test_the_byte_identity_tests_skip_says_what_it_needs(tmp_path: Path) -> None:
    environment = {**os.environ, "PIGMENT_AUDIT_REFERENCE_SCRIPT": str(tmp_path / "absent.py")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-q", "-p", "no:cacheprovider",
         "pigment_audit_assets_tests/test_core.py::"
         "test_csv_is_byte_identical_to_the_community_script"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert "1 skipped" in done.stdout, done.stdout
    assert "pigment_audit_tool.py" in done.stdout
    assert "PIGMENT_AUDIT_REFERENCE_SCRIPT=" in done.stdout


def test_the_readme_tells_a_newcomer_what_dagster_113_shows() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "*Assets →" not in readme  # Dagster 1.13's sidebar says Catalog
    assert "Catalog" in readme and "Materialize all" in readme
    assert "varying backfill policies" in readme
    assert "scripts/demo.py --port" in readme
    assert "python -m pigment_audit_assets_tests.stand_in" in readme
    assert "PIGMENT_AUDIT_REFERENCE_SCRIPT" in readme
