"""A sensor that names the run holding the Pigment pool's slot when that run is gone.

A run killed outside the daemon (``kill -9``, an OOM kill, a lost container whose launcher cannot
tell) keeps its ``pigment_api`` slot: Dagster frees slots only for runs that ended, and such a
run stays STARTED. Every later Pigment step then waits for the slot, with one DEBUG line. This
sensor looks at the pool every minute and, for a slot whose run ended, is unknown, or has written
nothing for a while (PIGMENT_AUDIT_POOL_STALE_SECONDS, default 900) while other steps wait, logs
a WARNING that names the run, the step and the command that frees the slot
(scripts/free_pool_slots.py). It writes the same WARNING once into the log of each waiting run,
where whoever wonders why a run waits looks. It changes nothing itself: a quiet run may be alive.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from .assets import POOL

STALE_VARIABLE = "PIGMENT_AUDIT_POOL_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 900.0
# Past the end of a run, the daemon's run monitoring frees its slots after
# free_slots_after_run_end_seconds; this much longer, the slot is reported.
ENDED_GRACE_SECONDS = 120.0
FREE_COMMAND = "python scripts/free_pool_slots.py --run {run_id}"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StuckSlot:
    """A pool slot held by a run that ended, is unknown, or has been quiet too long."""

    pool: str
    run_id: str
    step_key: str | None
    status: str | None  # None: the instance has no such run
    quiet_seconds: float | None  # since the run's last event; None when it has none
    waiting: tuple[tuple[str, str], ...] = field(default=())  # (run id, step key) of waiters

    @property
    def command(self) -> str:
        return FREE_COMMAND.format(run_id=self.run_id)

    def message(self) -> str:
        if self.status is None:
            state = "which this instance does not know"
        elif self.status in {status.value for status in FINISHED_STATUSES}:
            state = f"which ended ({self.status})"
        else:
            quiet = ("" if self.quiet_seconds is None
                     else f", silent for {self.quiet_seconds / 60:.0f} min")
            state = f"still {self.status}{quiet}"
        waiting = (f"; {len(self.waiting)} step(s) wait for it ("
                   + ", ".join(f"run {run_id} step {step}" for run_id, step in self.waiting)
                   + ")") if self.waiting else ""
        return (f"Pool {self.pool}: its slot is held by run {self.run_id} (step "
                f"{self.step_key}), {state}{waiting}. If that run's process is gone (kill -9, "
                f"out of memory, a lost container), free the slot with `{self.command}` (with "
                f"DAGSTER_HOME of this instance; it also marks the run failed), or in the UI: "
                f"Runs → {self.run_id} → Terminate → force termination, after which run "
                f"monitoring frees the slot. A run that is still working keeps its slot.")


def stale_seconds_from_env() -> float:
    value = os.environ.get(STALE_VARIABLE)
    try:
        return float(value) if value else DEFAULT_STALE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", STALE_VARIABLE, value,
                    DEFAULT_STALE_SECONDS)
        return DEFAULT_STALE_SECONDS


def last_event_timestamp(instance: dg.DagsterInstance, run_id: str) -> float | None:
    records = instance.get_records_for_run(run_id, limit=1, ascending=False).records
    return records[0].timestamp if records else None


def find_stuck_slots(instance: dg.DagsterInstance, pool: str = POOL, *,
                     stale_seconds: float = DEFAULT_STALE_SECONDS,
                     now: float | None = None) -> list[StuckSlot]:
    """The slots of ``pool`` whose holders look gone (nothing is changed)."""
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    info = instance.event_log_storage.get_concurrency_info(pool)
    waiting = tuple((step.run_id, step.step_key) for step in info.pending_steps
                    if step.assigned_timestamp is None)
    free_after = instance.run_monitoring_settings.get("free_slots_after_run_end_seconds") or 0
    stuck: list[StuckSlot] = []
    for slot in info.claimed_slots:
        record = instance.get_run_record_by_id(slot.run_id)
        if record is None:
            stuck.append(StuckSlot(pool, slot.run_id, slot.step_key, None, None, waiting))
            continue
        status = record.dagster_run.status
        last = last_event_timestamp(instance, slot.run_id)
        quiet = None if last is None else now - last
        if status in FINISHED_STATUSES:
            ended = record.end_time or last or record.create_timestamp.timestamp()
            if now - ended > free_after + ENDED_GRACE_SECONDS:
                stuck.append(StuckSlot(pool, slot.run_id, slot.step_key, status.value, quiet,
                                       waiting))
            continue
        since = last if last is not None else (record.start_time
                                               or record.create_timestamp.timestamp())
        if waiting and now - since > stale_seconds:
            stuck.append(StuckSlot(pool, slot.run_id, slot.step_key, status.value,
                                   now - since, waiting))
    return stuck


def warn_waiting_run(instance: dg.DagsterInstance, run_id: str, step_key: str,
                     message: str) -> None:
    """The warning in a waiting run's own event log, at WARNING."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return
    event = DagsterEvent(event_type_value=DagsterEventType.ENGINE_EVENT.value,
                         job_name=run.job_name, message=message, step_key=step_key,
                         event_specific_data=EngineEventData({}))
    instance.report_dagster_event(event, run_id=run_id, log_level=logging.WARNING)


@dg.sensor(name="pigment_pool_watch", minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description=f"Names, at WARNING, the run that holds the {POOL} pool's slot when it "
                       "looks gone (killed outside the daemon), and the command that frees it.")
def pigment_pool_watch(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    stuck = find_stuck_slots(context.instance, stale_seconds=stale_seconds_from_env())
    told = {tuple(pair) for pair in json.loads(context.cursor or "[]")}
    now_told: set[tuple[str, str]] = set()
    for slot in stuck:
        message = slot.message()
        context.log.warning(message)
        log.warning(message)
        for run_id, step_key in slot.waiting:
            pair = (slot.run_id, run_id)
            now_told.add(pair)
            if pair not in told:
                warn_waiting_run(context.instance, run_id, step_key, message)
    context.update_cursor(json.dumps(sorted(now_told)))
    if stuck:
        return dg.SkipReason(" ".join(slot.message() for slot in stuck))
    return dg.SkipReason(f"Every {POOL} slot is held by a live run, or free.")


def pool_watch_definitions() -> dg.Definitions:
    """The sensor, to merge into the project's Definitions."""
    return dg.Definitions(sensors=[pigment_pool_watch])
