"""``pigment-audit``: the community script's command line, on the project's core.

Same flags, same environment variables, same meaning: fetch the audit events of
``--start-date``..``--end-date`` (both included) into one CSV, push it to ``--import-config``
when given, and delete the CSV after a successful push unless ``--keep-file``. Unlike the
script it finds every event of those days whatever order Pigment pages in, drops none, retries
what can be retried, waits for Pigment's import reports, and exits non-zero when anything
failed. It never imports dagster, so it starts fast.

Exit codes: 0 done, 1 failed (Pigment, configuration, files), 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import shutil
import signal
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .chunks import Chunk, chunk_size_bytes, write_chunks
from .client import AUDIT_KEY_VARIABLE, IMPORT_KEY_VARIABLE, PigmentClient, check_base_url
from .collect import fetch_days
from .days import day_start, days_between, parse_zone
from .errors import ConfigError, PigmentAuditError, PushAnswerLostError
from .imports import (
    SHORT,
    SKIPPED,
    accounted_for,
    doubt,
    skipped_reasons_text,
    summarize_report,
)
from .storage import LocalStorage, atomic_write, scratch_dir
from .table import CsvTable

DEFAULT_BASE_URL = "https://pigment.app"
log = logging.getLogger("pigment_audit")


class _ProgressAwareHandler(logging.Handler):
    """Log lines to stderr, through tqdm once it draws bars, so they do not break them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        except Exception:  # logging must never crash the run
            self.handleError(record)


class _NoProgress:
    """What :func:`_progress` gives where tqdm would disable itself: nothing drawn."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, amount: float = 1) -> None:
        """Nothing to draw."""


def _progress(**options: Any) -> Any:
    """A tqdm progress bar on a terminal. Elsewhere (a log file, a pipe) tqdm would disable
    itself, so it is not even imported: that saves a fifth of the command's start-up."""
    if not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=None, **options)


def _valid_date(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Not a valid date: '{text}'. Expected format: YYYY-MM-DD.") from None


def _positive_megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):  # float() also accepts "nan" and "inf"
        raise argparse.ArgumentTypeError(f"--chunk-size must be a positive number of MB, "
                                         f"not '{text}'.")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with the community script's flags."""
    parser = argparse.ArgumentParser(
        prog="pigment-audit",
        description="Fetch Pigment audit logs, save to CSV, and optionally import back to "
                    "Pigment.",
        epilog="Environment:\n"
               "  PIGMENT_AUDIT_API_KEY   Audit logs API key (required)\n"
               "  PIGMENT_IMPORT_API_KEY  Import API key (required with --import-config)\n"
               f"  PIGMENT_BASE_URL        API host (default: {DEFAULT_BASE_URL}); point it at\n"
               "                          a local stand-in to try the command without an\n"
               "                          account (see the README)\n"
               "  PIGMENT_AUDIT_TIMEZONE  IANA zone whose days the dates are (default: UTC)\n\n"
               "Exit codes: 0 done, 1 failed, 2 bad arguments, 130 interrupted.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--start-date", required=True, type=_valid_date,
                        help="First day to export, YYYY-MM-DD.")
    parser.add_argument("--end-date", required=True, type=_valid_date,
                        help="Last day to export (included), YYYY-MM-DD.")
    parser.add_argument("--output-file", default="audit_data.csv",
                        help="Path for the output CSV file. (default: audit_data.csv)")
    parser.add_argument("--import-config", default=None,
                        help="The Pigment import configuration id. Triggers the upload.")
    parser.add_argument("--chunk-size", type=_positive_megabytes, default=480,
                        help="The upload chunk size in megabytes (MB). (default: 480)")
    parser.add_argument("--keep-file", action="store_true",
                        help="Do not delete the CSV file after a successful upload.")
    return parser


def _setup_logging() -> None:
    handler = _ProgressAwareHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - [%(levelname)s] - %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (also the process's when run as a script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.end_date < args.start_date:  # bad arguments: argparse's message and exit code 2
        parser.error(f"--end-date {args.end_date} is before --start-date {args.start_date}.")
    _setup_logging()
    # The scan and the CSV make millions of short-lived objects and no cycles: what was loaded
    # at start-up is set aside and the young ones are collected less often (a few per cent of
    # the command's CPU otherwise goes to walking them).
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    # kill, timeout and a service stop send SIGTERM (a closed terminal SIGHUP): they interrupt
    # as Ctrl-C does, so scratch and half-written temporary files are removed on the way out.
    # A signal already ignored (SIGHUP under nohup) stays ignored.
    previous = {stop: signal.signal(stop, _interrupt) for stop in _STOPS
                if signal.getsignal(stop) is not signal.SIG_IGN}
    try:
        return _run(args)
    except KeyboardInterrupt:
        log.warning("Interrupted; files already finished are complete, nothing half-written.")
        return 130
    except PigmentAuditError as error:
        log.error(str(error))
        return 1
    except OSError as error:
        log.error(f"File error: {error}")
        return 1
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


_STOPS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _check_output(text: str) -> Path:
    """``--output-file`` as a path, refused before any request when it cannot be a file this
    run can write: no name, a folder, or a folder (or the nearest existing one above it) this
    user cannot write in."""
    output = Path(text)
    if not text or output.name in ("", ".", "..") or output.is_dir():
        raise ConfigError(f"--output-file {text!r} is not a file name: give a path such as "
                          "audit_data.csv.")
    if output.exists() and not output.is_file():  # a device or a pipe: written in place
        return output
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-file {text!r}: the folder {str(folder)!r} is not writable "
                          "by this user (the file is written beside it, then renamed): choose "
                          "another folder.")
    return Path(text)


def _check_dates(first: date, last: date, zone: Any) -> None:
    """The days' bounds in ``zone`` must be datetimes (0001-01-01 in Tokyo is not)."""
    try:
        day_start(first, zone)
        day_start(last + timedelta(days=1), zone)
    except OverflowError:
        raise ConfigError(f"--start-date {first} / --end-date {last}: out of the range of "
                          "dates this command can place events in.") from None


def _run(args: argparse.Namespace) -> int:
    audit_key = os.environ.get(AUDIT_KEY_VARIABLE, "")
    import_key = os.environ.get(IMPORT_KEY_VARIABLE, "")
    if not audit_key:
        raise ConfigError(f"{AUDIT_KEY_VARIABLE} environment variable not set. This is required.")
    if args.import_config and not import_key:
        raise ConfigError(f"{IMPORT_KEY_VARIABLE} must be set to run an import "
                          "(--import-config was given).")
    chunk_bytes = chunk_size_bytes(args.chunk_size, "--chunk-size")
    zone = parse_zone(os.environ.get("PIGMENT_AUDIT_TIMEZONE") or "UTC")
    _check_dates(args.start_date, args.end_date, zone)
    base_url = os.environ.get("PIGMENT_BASE_URL") or DEFAULT_BASE_URL
    check_base_url(base_url)
    output = _check_output(args.output_file)
    client = PigmentClient(base_url, audit_key=audit_key, import_key=import_key or None, log=log)
    with scratch_dir("pigment-audit") as scratch, CsvTable(scratch) as table:
        storage = LocalStorage(scratch)
        with _progress(desc="Fetching events", unit=" events", unit_scale=True) as bar:
            # The CSV's rows are rendered during the scan, and no raw file is written: the
            # command line keeps only the CSV (and the rejects), as the script did.
            scan = fetch_days(client, days_between(args.start_date, args.end_date), zone,
                              storage, now=datetime.now(timezone.utc), log=log,
                              on_page=bar.update, table=table, raw_files=False)
        events = sum(day.events for day in scan.days.values())
        log.info(f"API pass complete: {events:,} events in {len(scan.days)} day(s), "
                 f"{scan.audit_requests} request(s).")
        if events == 0:
            _keep_rejects(scan.days.values(), output)
            log.warning("No event data found. CSV file will not be created.")
            return 0
        if len(table.kinds) != events:  # a bug, never bad data: refuse rather than drop rows
            raise PigmentAuditError(f"The CSV would hold {len(table.kinds):,} rows for "
                                    f"{events:,} events; nothing was written.")
        summary = table.write(output)
        # After the CSV: interrupted before, the previous CSV and its rejects stay a pair.
        _keep_rejects(scan.days.values(), output)
        if summary.collisions:
            log.warning(f"{summary.collisions} value(s) overwritten by a key that flattens to "
                        f"the same column: {dict(summary.collided_columns)}")
        log.info(f"Wrote {summary.rows:,} rows, {len(summary.columns)} columns to '{output}'.")
        if not args.import_config:
            log.info(f"CSV file created successfully at {output}. Skipping Pigment import.")
            return 0
        _push(client, output, args.import_config, chunk_bytes, scratch / "chunks")
    if args.keep_file:
        log.info(f"Upload complete. Intermediate file kept as requested: {output}")
    elif output.exists() and not output.is_file():
        log.info(f"Upload complete. {output} is not a regular file: nothing to delete.")
    else:
        log.info(f"Upload complete. Deleting intermediate file: {output}")
        if output.is_symlink():  # the CSV is the link's target: it goes, then the link
            Path(os.path.realpath(output)).unlink()
        output.unlink()
    return 0


def _keep_rejects(days: object, output: Path) -> None:
    """Copy the scan's rejected events next to the output, whole or not at all: never
    silently dropped. Without any, a rejects file of an earlier run is left, and named."""
    paths = [day.rejected_path for day in days if day.rejected]  # type: ignore[attr-defined]
    target = output.with_name(output.name + ".rejected.jsonl")
    if not paths:
        if target.exists():
            log.warning(f"'{target}' is from an earlier run (this one rejected no event); "
                        "it was left as it is.")
        return
    with atomic_write(target) as joined:
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, joined)
    log.warning(f"Some events could not be placed in a day; they are in '{target}'.")


def _push(client: PigmentClient, csv_path: Path, configuration_id: str, chunk_bytes: int,
          work: Path) -> None:
    with open(csv_path, "rb") as source:  # chunks are byte ranges of it: open until pushed
        chunks = write_chunks(source, chunk_bytes, work, setting="--chunk-size", in_place=True)
        import_ids, failed = _send_chunks(client, csv_path, configuration_id, chunks)
    for import_id, rows in import_ids:
        report = summarize_report(client.wait_for_import(import_id))
        log.info(f"Import {import_id}: {report['status']} (inserted {report['insertedCount']}, "
                 f"updated {report['updatedCount']}, skipped {report['skippedCount']})")
        verdict = doubt({"status": report["status"], "report": report, "rows": rows})
        if report["status"] == "Failed":
            failed.append(f"{import_id}: {'; '.join(report['errors']) or 'no details'}")
        elif verdict == SHORT:  # as the assets' import check: every row must be accounted for
            failed.append(f"{import_id}: Pigment's report accounts for "
                          f"{accounted_for(report):,} of the {rows:,} rows pushed")
        elif verdict == SKIPPED:
            failed.append(f"{import_id}: Pigment skipped {report['skippedCount']:,} of the "
                          f"{rows:,} rows" + skipped_reasons_text(report["skippedReasons"]))
    if failed:
        raise PigmentAuditError("Some imports failed or could not be confirmed, the CSV is "
                                "kept: " + " | ".join(failed))


def _send_chunks(client: PigmentClient, csv_path: Path, configuration_id: str,
                 chunks: list[Chunk]) -> tuple[list[tuple[str, int]], list[str]]:
    """Push each chunk; the import ids Pigment gave (with the chunk's rows), and the chunks
    whose answer was lost."""
    import_ids: list[tuple[str, int]] = []
    failed: list[str] = []
    with _progress(total=sum(chunk.bytes for chunk in chunks), unit="B", unit_scale=True,
                   unit_divisor=1024, desc=f"Uploading {csv_path.name}") as bar:
        for chunk in chunks:
            log.info(f"Sending chunk #{chunk.index} ({chunk.bytes / 1_048_576:.2f} MB)...")
            try:
                import_ids.append((client.push_csv(configuration_id, chunk), chunk.rows))
            except PushAnswerLostError as error:
                # Pigment started the import: pushing the chunk again would import it twice.
                # Go on with the rest, and fail at the end so the user checks this one.
                log.warning(f"Chunk #{chunk.index}: {error}")
                failed.append(f"chunk #{chunk.index}: import started, its id was lost")
            else:
                log.info(f"Chunk #{chunk.index} accepted as import {import_ids[-1][0]}.")
            bar.update(chunk.bytes)
    return import_ids, failed


if __name__ == "__main__":
    sys.exit(main())
