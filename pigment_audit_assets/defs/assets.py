"""The three daily assets: raw events → CSV → Pigment import. Each is a few lines over the core.

All three take a single-run backfill policy: a range of days runs as one run, so the raw asset
fetches the audit pages once for the whole range (see the README on backfills). Metadata is
attached per day with ``add_asset_metadata(partition_key=...)`` and holds only that day's
figures; the run-wide ones (the scan's requests, the rows of the whole range) go to the run's
logs. Each check gives one result per day. The yielded ``MaterializeResult`` carries no value:
nothing goes through an IO manager.

Descriptions are rendered as Markdown by the UI: paths with placeholders go in code spans
(`raw/YYYY-MM-DD.jsonl`), where a bare ``<day>`` would be taken for an HTML tag and vanish.
"""

import warnings
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import dagster as dg

from ..core.errors import PigmentAuditError
from . import checks
from .metadata import csv_day_metadata, import_day_metadata, raw_day_metadata, scan_summary
from .partitions import days_materialized_in_run, first_partition, partition_days
from .resources import PigmentResource

GROUP = "pigment_audit"
POOL = "pigment_api"  # limited to 1 in dagster.yaml: one process at a time spends the IP budget
FORCE_REPUSH_TAG = "pigment_audit/force_full_repush"
# Set by the daily schedule: scan from the ingestion watermark, placing late events in their days.
SCAN_TAG, INCREMENTAL = "pigment_audit/scan", "incremental"
FULL_RESCAN_TAG = "pigment_audit/rescan_in_full_from"  # the look-back: days re-read from start

# Two of Dagster's own notices, about choices this project made knowingly: single-run backfills
# (BackfillPolicy is beta in 1.13) and per-day check results (partitioned check specs are a
# preview). Dagster repeats them at every load, in the UI's console and in each run's logs; they
# are not the user's to act on, and the exact Dagster pin keeps their behaviour fixed.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`",
                        category=dg.BetaWarning)
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=dg.PreviewWarning)


class ImportConfig(dg.Config):
    """Run config of the import asset."""

    force_full_repush: bool = False
    """Push every event of the day again, even those already in Pigment."""


def _run_includes(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> bool:
    """Whether this run materializes ``asset_key`` too (the job is subset to the selection)."""
    return asset_key in context.job_def.asset_layer.selected_asset_keys


def _days_to_redo(context: dg.AssetExecutionContext, pigment: PigmentResource,
                  upstream: dg.AssetKey, *, csv_current: bool = False
                  ) -> tuple[list[date], set[date]]:
    """The days a CSV or import step covers, and which of them are only pending: the run's
    own, the older days its scan gave late events (materialized upstream in this run) and, in
    a daily run, the days an earlier run changed and whose import has not completed since
    (``pending/``: that run failed); for the import (``csv_current``) only those whose CSV
    was written since, so that it pushes no CSV this run has not brought up to date."""
    own = partition_days(context)
    days = set(own) | set(days_materialized_in_run(context, upstream))
    left: list[date] = []
    if context.run.tags.get(SCAN_TAG) == INCREMENTAL:
        # Days after the run's own are not complete yet: their own run covers them. Days
        # before the first partition (its start moved later) are no partition to report.
        first = first_partition(context)
        left = [day for day in pigment.pending_days(csv_current=csv_current)
                if first <= day <= own[-1] and day not in days]
        if left:
            context.log.info(f"Also {len(left)} day(s) an earlier run changed and whose "
                             f"import has not completed since: {', '.join(map(str, left))}.")
    return sorted(days | set(left)), set(left)


# What the materialization of an older day whose first file came from late events says.
_FIRST_FILE_NOTE = (" The day had no raw file before: it holds what daily scans saw of it, the "
                    "whole day only if a daily run covered it. If none did (a day before this "
                    "deployment's first daily run), materialize the day to read the rest.")


def _raw_still_passes(context: dg.AssetExecutionContext, pigment: PigmentResource,
                      day: date) -> bool:
    """Whether a day left pending by an earlier run passes the blocking raw check, read from
    its stored file: that run's failed check stopped its CSV and import, and this run's scan
    did not check the day again. A day that fails stays pending, with a warning."""
    try:
        verdict = checks.check_raw_file(pigment.storage(), day, pigment.zone())
    except (OSError, PigmentAuditError):  # unreadable: writing its CSV fails and says why
        return True
    if not verdict.passed:
        context.log.warning(f"{day}: still pending, its CSV not written: its raw file fails "
                            f"the check {checks.RAW_IDS_AND_DAYS} ({verdict.description}). "
                            "Fix the file, then run the day.")
    return verdict.passed


def _report(context: dg.AssetExecutionContext, day: date, own: list[date],
            metadata: dict[str, Any]) -> None:
    """A day's metadata: on the run's own partition, or as a materialization of its own for an
    older day that the daily scan brought late events to."""
    if day in own:
        context.add_asset_metadata(metadata, partition_key=day.isoformat())
    else:
        context.log_event(dg.AssetMaterialization(asset_key=context.asset_key,
                                                  partition=day.isoformat(), metadata=metadata))


def build_assets(partitions_def: dg.PartitionsDefinition, *,
                 key_prefix: Sequence[str] = (), group: str = GROUP,
                 resource_key: str = "pigment") -> list[dg.AssetsDefinition]:
    """The three assets over ``partitions_def``.

    ``key_prefix`` goes before each asset's key (``acme/raw_audit_events``), ``group`` is their
    group, ``resource_key`` the key of the :class:`PigmentResource` they use. The defaults are
    the project's single workspace: ``raw_audit_events`` in group ``pigment_audit``, resource
    ``pigment``.
    """
    prefix = list(key_prefix)
    common = {"partitions_def": partitions_def, "group_name": group,
              "backfill_policy": dg.BackfillPolicy.single_run(),
              "required_resource_keys": {resource_key}}
    if prefix:
        common["key_prefix"] = prefix
    import_key = dg.AssetKey([*prefix, "audit_events_import"])

    def resource(context: dg.AssetExecutionContext) -> PigmentResource:
        return getattr(context.resources, resource_key)

    @dg.asset(
        **common, pool=POOL, kinds={"pigment", "json"},
        check_specs=checks.raw_check_specs(partitions_def, prefix),
        description="Every audit event that happened on the day (in the partitions' zone), "
                    "once, exactly as Pigment's Audit API returned it: `raw/YYYY-MM-DD.jsonl`. "
                    "Events that cannot be placed go to `rejected/YYYY-MM-DD.rejected.jsonl`.",
    )
    def raw_audit_events(context: dg.AssetExecutionContext) -> Iterator[Any]:
        pigment = resource(context)
        days = partition_days(context)
        # Settings of the import too, when this run goes on to it: a run fails at its start.
        pigment.check_settings(fetch=True, push=_run_includes(context, import_key))
        incremental = context.run.tags.get(SCAN_TAG) == INCREMENTAL
        full_from = context.run.tags.get(FULL_RESCAN_TAG)
        scan = pigment.fetch_days(
            days, context.log, incremental_from=first_partition(context) if incremental else None,
            full_from=date.fromisoformat(full_from) if full_from else None)
        reported = []
        for day, day_file in scan.days.items():
            metadata = raw_day_metadata(day_file)
            if day in days:
                context.add_asset_metadata(metadata, partition_key=day.isoformat())
            elif day > days[-1]:  # today, say: not a partition yet; its run will cover it
                context.log.info(f"{day}: {day_file.added} event(s) kept in its raw file for "
                                 "the run that covers that day once it is complete.")
                continue
            elif day_file.changed:  # an older day that gained late events: Dagster must know
                description = f"{day_file.added} late event(s) placed by a daily scan."
                if day_file.first_file_from_late_events:
                    description += _FIRST_FILE_NOTE
                    context.log.warning(f"{day}: {day_file.added} late event(s) written to a new "
                                        "raw file." + _FIRST_FILE_NOTE)
                context.log_event(dg.AssetMaterialization(
                    asset_key=context.asset_key, partition=day.isoformat(), metadata=metadata,
                    description=description))
            else:
                continue
            reported.append(day)
        context.log.info(scan_summary(scan))
        yield dg.MaterializeResult()
        storage, zone = pigment.storage(), pigment.zone()
        yield from checks.day_evaluations(context, checks.RAW_IDS_AND_DAYS, {
            day: checks.check_raw_written(storage, scan.days[day], zone) for day in reported})
        yield from checks.day_evaluations(context, checks.RAW_REJECTED, {
            day: checks.check_rejected(scan.days[day]) for day in reported})

    @dg.asset(
        **common, deps=[raw_audit_events], kinds={"csv"},
        check_specs=checks.csv_check_specs(partitions_def, prefix),
        description="The day's events flattened like the community script (nested keys joined "
                    "with `_`, list items by index), columns by density: "
                    "`csv/YYYY-MM-DD.csv`.",
    )
    def audit_events_csv(context: dg.AssetExecutionContext) -> Iterator[Any]:
        pigment = resource(context)
        # The import's settings too, when this run goes on to it: before any CSV is written.
        pigment.check_settings(push=_run_includes(context, import_key))
        own = partition_days(context)
        days, only_pending = _days_to_redo(context, pigment, raw_audit_events.key)
        rows = 0
        storage = pigment.storage()
        summaries = {}
        for day in days:
            if day in only_pending and not _raw_still_passes(context, pigment, day):
                continue
            try:
                summary = pigment.write_day_csv(day, context.log,
                                                owner=f"Dagster run {context.run.run_id}")
            except PigmentAuditError as error:
                if day not in only_pending:
                    raise
                # Another run's leftover must not block this run's own days: it stays pending.
                context.log.warning(f"{day}: still pending, its CSV could not be written: "
                                    f"{error}")
                continue
            summaries[day] = summary
            rows += summary.rows
            if summary.collisions:
                context.log.warning(f"{day}: {summary.collisions} value(s) overwritten by keys "
                                    f"that flatten to one column: {dict(summary.collided_columns)}")
            preview = storage.open_read(storage.csv_key(day))
            _report(context, day, own, csv_day_metadata(summary, preview))
        context.log.info(f"This run wrote {rows:,} CSV row(s) over {len(summaries)} day(s).")
        yield dg.MaterializeResult()
        yield from checks.day_evaluations(context, checks.CSV_ROWS, {
            day: checks.check_csv_written(storage, day, summary)
            for day, summary in summaries.items()})

    @dg.asset(
        **common, deps=[audit_events_csv], pool=POOL, kinds={"pigment"},
        check_specs=checks.import_check_specs(partitions_def, prefix),
        description="The day's CSV pushed into the Pigment import configuration, each event "
                    "once; import ids and Pigment's reports in `imports/YYYY-MM-DD.json`.",
    )
    def audit_events_import(context: dg.AssetExecutionContext,
                            config: ImportConfig) -> Iterator[Any]:
        pigment = resource(context)
        force = config.force_full_repush or context.run.tags.get(FORCE_REPUSH_TAG) == "true"
        outcomes, failures = [], []
        own = partition_days(context)
        days, _ = _days_to_redo(context, pigment, audit_events_csv.key, csv_current=True)
        for day in days:
            try:
                outcome = pigment.push_day(day, context.log, force=force,
                                           owner=f"Dagster run {context.run.run_id}")
            except PigmentAuditError as error:
                failures.append(str(error))  # go on: other days still get pushed and recorded
                continue
            outcomes.append(outcome)
            _report(context, day, own, import_day_metadata(outcome))
        if failures:
            raise dg.Failure(description="\n".join(failures))
        context.log.info(f"This run pushed {sum(outcome.rows_pushed for outcome in outcomes):,} "
                         f"row(s) in {sum(len(outcome.import_ids) for outcome in outcomes)} "
                         f"import(s) over {len(outcomes)} day(s).")
        yield dg.MaterializeResult()
        configuration_id = pigment.configuration_id()
        yield from checks.day_evaluations(context, checks.IMPORT_REPORTS, {
            outcome.day: checks.check_import_reports(outcome, configuration_id)
            for outcome in outcomes})

    return [raw_audit_events, audit_events_csv, audit_events_import]
