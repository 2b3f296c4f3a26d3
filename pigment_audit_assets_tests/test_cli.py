"""``pigment-audit`` end to end: the community script's flags, against the stand-in."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
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


# --- from a review of the command line (each failed on the code before) -----------------------

def test_an_import_that_falls_short_or_skips_rows_keeps_the_csv_and_fails(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """Before, only a Failed import failed the command: a Completed one that accounted for
    fewer rows than pushed exited 0 and deleted the CSV that held the missing rows."""
    fill(stand_in)
    for partly, expected in (({"unreported": 5}, "accounts for 85 of the 90 rows"),
                             ({"skipped": 3, "reason": "Member not found"},
                              "skipped 3 of the 90 rows (Member not found: 3)")):
        stand_in.complete_next_import_partly(**partly)  # type: ignore[arg-type]
        done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(),
                             "--end-date", DAY.isoformat(), "--import-config", CONFIGURATION_ID)
        assert done.returncode == 1, done.stderr
        assert expected in done.stderr and "the CSV is kept" in done.stderr
        assert len(csv_ids(tmp_path / "audit_data.csv")) == 90


def test_the_output_file_keeps_its_link_and_its_permissions(stand_in: PigmentStandIn,
                                                            tmp_path: Path) -> None:
    fill(stand_in)
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "audit.csv"
    target.write_text("old report\n")
    target.chmod(0o600)
    (tmp_path / "audit_data.csv").symlink_to(target)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat())
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "audit_data.csv").is_symlink()  # written through, not replaced
    assert len(csv_ids(target)) == 90
    assert target.stat().st_mode & 0o777 == 0o600  # a private file stays private


def test_bad_settings_are_named_before_any_request(stand_in: PigmentStandIn,
                                                   tmp_path: Path) -> None:
    """Each was a traceback, some only after the whole scan."""
    day = ("--start-date", DAY.isoformat(), "--end-date", DAY.isoformat())
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        (("--output-file", ""), {}, "--output-file '' is not a file name"),
        (("--output-file", "."), {}, "--output-file '.' is not a file name"),
        (("--chunk-size", "1e308"), {}, "--chunk-size 1e+308 is too large"),
        ((), {"PIGMENT_AUDIT_API_KEY": "k€y"}, "PIGMENT_AUDIT_API_KEY holds characters"),
        (("--import-config", CONFIGURATION_ID), {"PIGMENT_IMPORT_API_KEY": "k€y"},
         "PIGMENT_IMPORT_API_KEY holds characters"),
        ((), {"PIGMENT_BASE_URL": "http://[::1"}, "PIGMENT_BASE_URL='http://[::1' is not a"),
        ((), {"PIGMENT_AUDIT_SCRATCH_DIR": "~no-such-user-here/x"},
         "PIGMENT_AUDIT_SCRATCH_DIR='~no-such-user-here/x'"),
    ]
    for args, env, expected in cases:
        done = pigment_audit(stand_in, tmp_path, *day, *args, **env)
        assert done.returncode == 1 and expected in done.stderr, (args, env, done.stderr)
        assert "Traceback" not in done.stderr and "k€y" not in done.stderr
    tokyo = pigment_audit(stand_in, tmp_path, "--start-date", "0001-01-01", "--end-date",
                          "0001-01-01", PIGMENT_AUDIT_TIMEZONE="Asia/Tokyo")
    assert tokyo.returncode == 1 and "out of the range of dates" in tokyo.stderr
    assert "Traceback" not in tokyo.stderr
    assert stand_in.request_counts["audit"] == 0


def test_rejects_are_written_after_the_csv_and_an_earlier_runs_are_named(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    fill(stand_in)
    no_id = {"eventType": "UserInvited", "eventTimestamp": f"{DAY}T11:59:00Z",
             "ingestionTimestamp": f"{DAY}T12:00:00Z"}
    stand_in.add_events([no_id])
    day = ("--start-date", DAY.isoformat(), "--end-date", DAY.isoformat())
    done = pigment_audit(stand_in, tmp_path, *day, "--output-file", "new/out.csv")
    assert done.returncode == 0, done.stderr  # the rejects go in the folder made for the CSV
    rejects = tmp_path / "new" / "out.csv.rejected.jsonl"
    assert "UserInvited" in rejects.read_text()
    later = (DAY + timedelta(days=1)).isoformat()  # its scan starts after the reject came
    again = pigment_audit(stand_in, tmp_path, "--start-date", later, "--end-date", later,
                          "--output-file", "new/out.csv")
    assert again.returncode == 0, again.stderr
    assert f"'{Path('new/out.csv.rejected.jsonl')}' is from an earlier run" in again.stderr
    assert "UserInvited" in rejects.read_text()  # left as it was


def test_a_terminated_run_leaves_no_scratch_or_half_written_file(tmp_path: Path) -> None:
    """SIGTERM (kill, timeout, a service stop) cleans up as Ctrl-C does."""
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100) as slow:
        slow.add_events(synthetic_events(DAY, 300, seed=4))
        slow.inject(Fault("slow", endpoint="audit", delay=10))
        scratch = tmp_path / "scratch"
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("PIGMENT_")}
        environment.update({"PIGMENT_BASE_URL": slow.base_url,
                            "PIGMENT_AUDIT_API_KEY": AUDIT_KEY,
                            "PIGMENT_AUDIT_SCRATCH_DIR": str(scratch)})
        process = subprocess.Popen(
            [str(COMMAND), "--start-date", DAY.isoformat(), "--end-date", DAY.isoformat()],
            cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while slow.request_counts["audit"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the first request, not standing in for it
        assert slow.request_counts["audit"] > 0
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted" in stderr
    assert not scratch.exists() or list(scratch.iterdir()) == []
    assert [path.name for path in tmp_path.iterdir() if path.name != "scratch"] == []


def test_the_csv_can_go_to_standard_output_through_a_pipe(stand_in: PigmentStandIn,
                                                          tmp_path: Path) -> None:
    fill(stand_in)
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--output-file", "/dev/stdout")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(done.stdout.splitlines()))
    assert sorted(row["id"] for row in rows) == sorted(
        event["id"] for event in stand_in.visible_events(event_day=DAY))


def test_a_linked_csv_is_deleted_with_its_link_after_the_push(stand_in: PigmentStandIn,
                                                              tmp_path: Path) -> None:
    """Before, only the link went: the CSV (user e-mails included) stayed at its target."""
    fill(stand_in)
    target = tmp_path / "shared" / "audit.csv"
    target.parent.mkdir()
    (tmp_path / "audit_data.csv").symlink_to(Path("shared") / "audit.csv")
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat(), "--import-config", CONFIGURATION_ID)
    assert done.returncode == 0, done.stderr
    assert not target.exists() and not (tmp_path / "audit_data.csv").is_symlink()
    assert len(stand_in.pushed_rows()) == 90


def test_a_run_under_nohup_outlives_a_hangup(tmp_path: Path) -> None:
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100) as slow:
        slow.add_events(synthetic_events(DAY, 300, seed=4))
        slow.inject(Fault("slow", endpoint="audit", delay=2))
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("PIGMENT_")}
        environment.update({"PIGMENT_BASE_URL": slow.base_url,
                            "PIGMENT_AUDIT_API_KEY": AUDIT_KEY})
        process = subprocess.Popen(
            [str(COMMAND), "--start-date", DAY.isoformat(), "--end-date", DAY.isoformat()],
            cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))  # as nohup does
        deadline = time.monotonic() + 60
        while slow.request_counts["audit"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling for the first request, not standing in for it
        process.send_signal(signal.SIGHUP)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert len(csv_ids(tmp_path / "audit_data.csv")) == 300


def test_a_reject_ingested_after_the_range_is_kept_by_the_command_line(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """The command line has no later run to file it: it goes in this run's rejects."""
    fill(stand_in)
    later = DAY + timedelta(days=1)
    stand_in.add_events([{"eventType": "UserInvited", "eventTimestamp": f"{later}T11:59:00Z",
                          "ingestionTimestamp": f"{later}T12:00:00Z"}])
    done = pigment_audit(stand_in, tmp_path, "--start-date", DAY.isoformat(), "--end-date",
                         DAY.isoformat())
    assert done.returncode == 0, done.stderr
    assert "UserInvited" in (tmp_path / "audit_data.csv.rejected.jsonl").read_text()
