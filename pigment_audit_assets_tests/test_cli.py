"""``pigment-audit`` end to end: the community script's flags, against the stand-in."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    DAY,
    IMPORT_KEY,
    days_before,
)
from pigment_audit_assets_tests.stand_in import Fault, PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events

COMMAND = Path(sys.executable).parent / "pigment-audit"


def pigment_audit(stand_in: PigmentStandIn, cwd: Path, *args: str,
                  **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("PIGMENT_")}
    environment.update({"PIGMENT_BASE_URL": stand_in.base_url, "PIGMENT_AUDIT_API_KEY": AUDIT_KEY,
                        "PIGMENT_IMPORT_API_KEY": IMPORT_KEY, **env})
    return subprocess.run([str(COMMAND), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=120)


def csv_ids(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["id"] for row in csv.DictReader(handle)]


def fill(stand_in: PigmentStandIn) -> None:
    for day in days_before(DAY + timedelta(days=1), 5):
        stand_in.add_events(synthetic_events(day, 90, seed=day.toordinal()))


def test_export_a_range_to_one_csv(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    fill(stand_in)
    first, last = DAY - timedelta(days=2), DAY
    done = pigment_audit(stand_in, tmp_path, "--start-date", first.isoformat(),
                         "--end-date", last.isoformat(), "--output-file", "out.csv")
    assert done.returncode == 0, done.stderr
    truth = [event["id"] for offset in range(3)
             for event in stand_in.visible_events(event_day=first + timedelta(days=offset))]
    assert sorted(csv_ids(tmp_path / "out.csv")) == sorted(truth)
    assert len(truth) == 270
    assert stand_in.request_counts["push"] == 0
    assert "Skipping Pigment import" in done.stderr


def test_default_output_file_and_push_then_delete(stand_in: PigmentStandIn,
                                                  tmp_path: Path) -> None:
    fill(stand_in)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", CONFIGURATION_ID,
                         "--chunk-size", "0.01")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "audit_data.csv").exists()  # deleted after a successful push
    assert len(stand_in.imports) > 1  # 0.01 MB chunks
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(
        event["id"] for event in stand_in.visible_events(event_day=DAY))
    assert "Completed" in done.stderr


def test_keep_file_keeps_the_csv(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    fill(stand_in)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", CONFIGURATION_ID, "--keep-file")
    assert done.returncode == 0, done.stderr
    assert len(csv_ids(tmp_path / "audit_data.csv")) == 90


def test_failed_import_exits_non_zero_and_keeps_the_csv(stand_in: PigmentStandIn,
                                                        tmp_path: Path) -> None:
    fill(stand_in)
    stand_in.fail_next_imports(1)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", CONFIGURATION_ID)
    assert done.returncode == 1
    assert "Some imports failed" in done.stderr
    assert (tmp_path / "audit_data.csv").exists()


def test_clear_errors_and_exit_codes(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    day = DAY.isoformat()
    bad_date = pigment_audit(stand_in, tmp_path, "--start-date", "2025-13-01", "--end-date", day)
    assert bad_date.returncode == 2 and "Not a valid date: '2025-13-01'" in bad_date.stderr
    reversed_range = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date",
                                   (DAY - timedelta(days=1)).isoformat())
    assert reversed_range.returncode == 2 and "--end-date" in reversed_range.stderr  # bad arguments
    no_key = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                           PIGMENT_AUDIT_API_KEY="")
    assert no_key.returncode == 1 and "PIGMENT_AUDIT_API_KEY" in no_key.stderr
    no_import_key = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                                  "--import-config", CONFIGURATION_ID, PIGMENT_IMPORT_API_KEY="")
    assert no_import_key.returncode == 1 and "PIGMENT_IMPORT_API_KEY" in no_import_key.stderr
    wrong_key = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                              PIGMENT_AUDIT_API_KEY="wrong-key-4711")
    assert wrong_key.returncode == 1 and "PIGMENT_AUDIT_API_KEY" in wrong_key.stderr
    assert "wrong-key-4711" not in wrong_key.stderr + wrong_key.stdout
    unknown_config = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                                   "--import-config", "no-such-config")
    # No events on DAY yet: nothing to push, so no request names the configuration.
    assert unknown_config.returncode == 0
    assert "No event data found" in unknown_config.stderr
    assert not (tmp_path / "audit_data.csv").exists()
    bad_chunk = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                              "--chunk-size", "0")
    assert bad_chunk.returncode == 2 and "--chunk-size" in bad_chunk.stderr
    assert stand_in.request_counts["push"] == 0


def test_unknown_configuration_fails_naming_it(stand_in: PigmentStandIn, tmp_path: Path) -> None:
    fill(stand_in)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", "no-such-config")
    assert done.returncode == 1
    assert "--import-config" in done.stderr and "no-such-config" in done.stderr
    assert (tmp_path / "audit_data.csv").exists()


def test_the_command_does_not_import_dagster() -> None:
    program = ("import sys, pigment_audit_assets.core.cli; "
               "sys.exit('dagster' in sys.modules or 'pandas' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", program]).returncode == 0


def test_a_push_whose_answer_is_lost_is_not_repeated(stand_in: PigmentStandIn,
                                                      tmp_path: Path) -> None:
    fill(stand_in)
    stand_in.inject(Fault(kind="truncate", endpoint="push"))
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", CONFIGURATION_ID,
                         "--chunk-size", "0.01")
    assert done.returncode == 1
    assert "chunk #1: import started, its id was lost" in done.stderr
    # Every chunk went once, the cut-off one included, and the CSV is kept for checking.
    assert sorted(row["id"] for row in stand_in.pushed_rows()) == sorted(
        event["id"] for event in stand_in.visible_events(event_day=DAY))
    assert (tmp_path / "audit_data.csv").exists()


def test_a_key_with_a_newline_is_refused_without_showing_it(stand_in: PigmentStandIn,
                                                            tmp_path: Path) -> None:
    day = DAY.isoformat()
    done = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                         PIGMENT_AUDIT_API_KEY="k-secret-9\n")
    assert done.returncode == 1 and "PIGMENT_AUDIT_API_KEY has spaces" in done.stderr
    assert "k-secret-9" not in done.stderr + done.stdout
    assert stand_in.request_counts["audit"] == 0
    no_scheme = pigment_audit(stand_in, tmp_path, "--start-date", day, "--end-date", day,
                              PIGMENT_BASE_URL="pigment.app")
    assert no_scheme.returncode == 1 and "PIGMENT_BASE_URL='pigment.app'" in no_scheme.stderr
