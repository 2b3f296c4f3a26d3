"""``PigmentResource``: the one configurable resource behind every asset that calls Pigment."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import dagster as dg
from pydantic import Field

from ..core.chunks import chunk_size_bytes
from ..core.client import (
    AUDIT_KEY_VARIABLE,
    IMPORT_KEY_VARIABLE,
    Log,
    PigmentClient,
    RetryPolicy,
    check_base_url,
    shared_pacer,
)
from ..core.collect import ScanResult, fetch_days, plan_incremental_scan
from ..core.days import parse_zone
from ..core.errors import ConfigError, DayLeaseHeldError
from ..core.imports import ImportOutcome, push_day
from ..core.pending import clear_if_pushed, pending_days, read_mark
from ..core.storage import (
    DEFAULT_STORAGE_URL,
    STORAGE_VARIABLE,
    Storage,
    remove_stale_scratch,
    storage_from_url,
)
from ..core.table import CsvSummary, write_day_csv
from ..core.watermark import advance_watermark
from ..core.zones import ZONE_VARIABLE as TIMEZONE_VARIABLE
from ..core.zones import check_zone

CONFIGURATION_VARIABLE = "PIGMENT_IMPORT_CONFIGURATION_ID"


class PigmentResource(dg.ConfigurableResource):
    """Pigment's APIs and the storage root, configured from the environment.

    Keys arrive through ``dagster.EnvVar`` and are kept out of the repr, logs and metadata.
    A missing or invalid setting fails at the start of the step that needs it, naming the
    environment variable to set.
    """

    audit_api_key: str | None = Field(default=None, repr=False,
                                      description=f"Audit Logs API key ({AUDIT_KEY_VARIABLE}).")
    import_api_key: str | None = Field(default=None, repr=False,
                                       description=f"Import API key ({IMPORT_KEY_VARIABLE}).")
    import_configuration_id: str | None = Field(
        default=None, description=f"Import configuration to push into ({CONFIGURATION_VARIABLE}).")
    base_url: str = Field(default="https://pigment.app", description="API host (PIGMENT_BASE_URL).")
    storage_url: str = Field(default=DEFAULT_STORAGE_URL,
                             description="Where files go: a local folder or s3://bucket/prefix, "
                                         "gs://, az:// (PIGMENT_AUDIT_STORAGE_URL).")
    timezone: str = Field(default="UTC",
                          description="Zone of the daily partitions (PIGMENT_AUDIT_TIMEZONE).")
    chunk_size_mb: float = Field(default=480.0, description="Largest push, in MiB.")
    timeout_seconds: float = Field(default=60.0, description="Time-out of one HTTP request.")
    retry_patience_seconds: float = Field(
        default=420.0, description="How long to keep retrying 429/5xx/broken answers; the "
        "default outlasts Pigment's 5-minute rate-limit window.")
    retry_min_backoff_seconds: float = Field(
        default=1.0, description="First back-off without Retry-After; doubles, with jitter.")
    retry_max_backoff_seconds: float = Field(
        default=120.0, description="Longest back-off between two attempts without Retry-After.")
    requests_per_window: int = Field(default=500, description="Pace: requests per window.")
    window_seconds: float = Field(default=300.0, description="Pace: the window, in seconds.")
    import_poll_seconds: float = Field(default=5.0, description="Longest wait between polls.")
    import_poll_timeout_seconds: float = Field(
        default=1800.0, description="How long to wait for one import to finish.")
    watermark_overlap_minutes: float = Field(
        default=60.0, description="How far before the watermark the daily scan starts, for "
        "events Pigment makes visible after others ingested later (README, late events).")
    lease_wait_seconds: float = Field(
        default=3600.0, description="How long a run waits for another run that is writing or "
        "pushing the same day (the day's leases) before it fails naming that run.")

    # --- validated settings ----------------------------------------------------------------

    def zone(self) -> ZoneInfo:
        """The partitions' zone."""
        return parse_zone(self.timezone, self.setting_names()["timezone"])

    def storage(self) -> Storage:
        """The storage the files live in."""
        return storage_from_url(self.storage_url, self.setting_names()["storage_url"])

    def setting_names(self) -> dict[str, str]:
        """What errors tell the user to fix, per setting: here the environment variables
        (a Component's workspace names its YAML file and fields instead)."""
        return {"audit": AUDIT_KEY_VARIABLE, "import": IMPORT_KEY_VARIABLE,
                "timezone": TIMEZONE_VARIABLE, "storage_url": STORAGE_VARIABLE}

    def chunk_bytes(self) -> int:
        """The chunk size in bytes."""
        return chunk_size_bytes(self.chunk_size_mb, "chunk_size_mb")

    def configuration_id(self) -> str:
        """The import configuration id, or a ConfigError naming its variable."""
        if not self.import_configuration_id:
            raise ConfigError(f"{CONFIGURATION_VARIABLE} is not set: the import asset needs "
                              "the id of the Pigment import configuration to push into.")
        return self.import_configuration_id

    def check_settings(self, *, fetch: bool = False, push: bool = False) -> None:
        """Fail with a ConfigError naming the variable or field of the first bad setting.

        ``fetch`` adds what the raw asset needs, ``push`` what the import asset needs; the
        first step of a run checks for every asset the run will materialize, so a run fails at
        its start, before any request or file.
        """
        check_base_url(self.base_url)
        self.zone()
        self.storage()
        if not 0 <= self.watermark_overlap_minutes <= 7 * 24 * 60:
            raise ConfigError(f"watermark_overlap_minutes must be from 0 to 10080 (a week), not "
                              f"{self.watermark_overlap_minutes!r}.")
        if not self.lease_wait_seconds >= 0:
            raise ConfigError(f"lease_wait_seconds must be 0 or more, not "
                              f"{self.lease_wait_seconds!r}.")
        for name in ("retry_patience_seconds", "timeout_seconds", "retry_min_backoff_seconds",
                     "retry_max_backoff_seconds", "window_seconds", "import_poll_seconds",
                     "import_poll_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not "
                                  f"{getattr(self, name)!r}.")
        if self.requests_per_window < 1:
            raise ConfigError(f"requests_per_window must be at least 1, not "
                              f"{self.requests_per_window!r}.")
        if fetch and not self.audit_api_key:
            raise ConfigError(f"{AUDIT_KEY_VARIABLE} is not set: the raw events asset needs an "
                              "'Audit logs' API key (a Security Admin creates it).")
        if push:
            if not self.import_api_key:
                raise ConfigError(f"{IMPORT_KEY_VARIABLE} is not set: the import asset needs an "
                                  "'Import or Export' API key (a Workspace Admin creates it).")
            self.configuration_id()
            self.chunk_bytes()

    def client(self, log: Log, *, audit: bool = False, push: bool = False) -> PigmentClient:
        """A client for this run; checks that the settings its calls need are there."""
        self.check_settings(fetch=audit, push=push)
        return PigmentClient(
            self.base_url, audit_key=self.audit_api_key, import_key=self.import_api_key,
            timeout_seconds=self.timeout_seconds,
            retry=RetryPolicy(patience_seconds=self.retry_patience_seconds,
                              min_backoff_seconds=self.retry_min_backoff_seconds,
                              max_backoff_seconds=self.retry_max_backoff_seconds),
            pacer=shared_pacer(self.requests_per_window, self.window_seconds), log=log,
            key_names=self.setting_names(),
        )

    # --- the three steps --------------------------------------------------------------------

    def fetch_days(self, days: list[date], log: Log, *, incremental_from: date | None = None,
                   full_from: date | None = None) -> ScanResult:
        """Scan the Audit API once and write the raw (and rejects) file of every day.

        With ``incremental_from`` (the first partition), the daily run's scan: from the
        watermark less the overlap, every event into the raw file of its own day from that
        first partition on, and the watermark moved forward once the files are written;
        ``full_from``: a day from which the scan re-reads everything (the look-back).
        """
        storage, zone = self.storage(), self.zone()
        storage.check_access()  # a missing bucket or key fails here, before any request
        # Days of another zone are never mixed into these files.
        check_zone(storage, zone, self.setting_names()["timezone"])
        now = datetime.now(timezone.utc)
        plan = plan_incremental_scan(storage, days, zone, now, incremental_from,
                                     timedelta(minutes=self.watermark_overlap_minutes), log,
                                     full_from=full_from) if incremental_from else None
        for path in remove_stale_scratch() + storage.remove_stale_temporaries():
            log.info(f"Removed scratch left by an interrupted run: {path}")
        client = self.client(log, audit=True)
        try:
            scan = fetch_days(client, days, zone, storage, now=now, log=log,
                              since=plan.since if plan else None,
                              unreachable=plan.unreachable if plan else None,
                              lease_wait_seconds=self.lease_wait_seconds)
        finally:
            client.close()
        if plan is None:
            return scan
        scan.watermark = advance_watermark(storage, plan.state, scan.newest_ingested)
        return scan

    def write_day_csv(self, day: date, log: Log, *, owner: str) -> CsvSummary:
        """Flatten a day's raw file into its CSV, under the day's raw lease."""
        storage = self.storage()
        try:
            return write_day_csv(storage, day, owner=owner, log=log,
                                 wait_seconds=self.lease_wait_seconds)
        except FileNotFoundError:
            raise ConfigError(f"{storage.uri(storage.raw_key(day))} does not exist: materialize "
                              f"the raw events of {day} first (or check "
                              f"{self.setting_names()['storage_url']})."
                              ) from None

    def push_day(self, day: date, log: Log, *, force: bool = False,
                 owner: str | None = None) -> ImportOutcome:
        """Push the day's not-yet-pushed events and wait for Pigment's reports; then the
        day's pending mark goes, if the CSV pushed was of the raw file it was made for."""
        storage, configuration_id, chunk_bytes = (self.storage(), self.configuration_id(),
                                                  self.chunk_bytes())
        if not storage.exists(storage.csv_key(day)):
            raise ConfigError(f"{storage.uri(storage.csv_key(day))} does not exist: materialize "
                              f"the CSV of {day} first (or check "
                              f"{self.setting_names()['storage_url']}).")
        mark = read_mark(storage, day)  # before the CSV is read: what the push will cover
        client = self.client(log, push=True)
        try:
            outcome = push_day(client, storage, day, configuration_id, chunk_bytes, force=force,
                               poll_seconds=self.import_poll_seconds,
                               poll_timeout_seconds=self.import_poll_timeout_seconds, log=log,
                               owner=owner, lease_wait_seconds=self.lease_wait_seconds)
        finally:
            client.close()
        if mark is not None:
            try:
                if clear_if_pushed(storage, mark, owner=owner or "an import", log=log,
                                   wait_seconds=self.lease_wait_seconds):
                    log.info(f"{day}: no longer pending: its import completed.")
            except DayLeaseHeldError as error:  # the push stands; the next daily run redoes it
                log.warning(f"{day}: the import completed, but the day stays pending: {error}")
        return outcome

    def pending_days(self, *, csv_current: bool = False) -> list[date]:
        """Days a scan changed whose import has not completed since; with ``csv_current``,
        only those whose CSV was written since (an import can push them now)."""
        storage = self.storage()
        days = pending_days(storage)
        if not csv_current:
            return days
        marks = (read_mark(storage, day) for day in days)
        return [mark.day for mark in marks if mark is not None and mark.csv_current]
