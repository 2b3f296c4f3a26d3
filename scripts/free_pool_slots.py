#!/usr/bin/env python3
"""Show who holds the Pigment pool's slot, and free the slot of a run whose process is gone.

A run killed outside the daemon (kill -9, out of memory, a lost container) keeps its
``pigment_api`` slot and stays STARTED; later Pigment steps wait for the slot forever. The sensor
``pigment_pool_watch`` names such a run at WARNING. With DAGSTER_HOME set to the instance's
folder (its dagster.yaml, and for PostgreSQL the DAGSTER_PG_* variables):

    python scripts/free_pool_slots.py                  # the slot holders and the waiting steps
    python scripts/free_pool_slots.py --run RUN_ID     # mark that run failed, free its slots

Freeing the slot of a run that is in fact still working lets two Pigment steps run at once:
check first that its process is gone. The same is done in the UI: Runs → the run → Terminate →
force termination (then run monitoring frees the slot), or on the pool's page, "Free slots".
"""

from __future__ import annotations

import argparse
import sys

POOL = "pigment_api"


def describe(instance, pool: str) -> str:
    from pigment_audit_assets.defs.pool_watch import find_stuck_slots

    info = instance.event_log_storage.get_concurrency_info(pool)
    lines = [f"Pool {pool}: limit {info.limit}, {len(info.claimed_slots)} slot(s) held"]
    for slot in info.claimed_slots:
        run = instance.get_run_by_id(slot.run_id)
        status = run.status.value if run else "unknown run"
        lines.append(f"  held by run {slot.run_id} step {slot.step_key} ({status})")
    for step in info.pending_steps:
        state = "assigned" if step.assigned_timestamp else "waiting"
        lines.append(f"  {state}: run {step.run_id} step {step.step_key}")
    for stuck in find_stuck_slots(instance, pool, stale_seconds=0):
        lines.append(f"  run {stuck.run_id} ended or is silent while steps wait: if its "
                     f"process is gone, free its slot with `{stuck.command}`")
    return "\n".join(lines)


def free(instance, pool: str, run_id: str) -> int:
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    info = instance.event_log_storage.get_concurrency_info(pool)
    held = [slot.step_key for slot in info.claimed_slots if slot.run_id == run_id]
    pending = [step.step_key for step in info.pending_steps if step.run_id == run_id]
    if not held and not pending:
        print(f"Run {run_id} holds no {pool} slot and waits for none: nothing to free.")
        return 1
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in FINISHED_STATUSES:
        # Else the run stays STARTED for ever, counted among the runs in progress.
        instance.report_run_failed(
            run, message=f"Marked failed by free_pool_slots.py, which freed its {pool} slot: "
                         "its process was gone.")
        print(f"Run {run_id} was {run.status.value}: marked FAILURE.")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    print(f"Freed run {run_id}'s {pool} slot(s) (steps {', '.join(held) or 'none'}); "
          f"{len(pending)} pending step(s) of it removed.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="free the slots of this run (and mark it failed if it "
                                      "has not ended)")
    parser.add_argument("--pool", default=POOL, help=f"the pool (default {POOL})")
    args = parser.parse_args(argv)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        if args.run:
            return free(instance, args.pool, args.run)
        print(describe(instance, args.pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
