"""Serve one synthetic day from the project's Pigment stand-in, for the benchmarks.

The stand-in's own command line (``python -m pigment_audit_assets_tests.stand_in``) lays out
the last N days up to today with late events; a benchmark needs exactly one fixed day, no late
events and oldest-first pages, so this launcher builds the stand-in itself. It prints
``READY <base_url> <events>`` on stdout once serving, and stops on SIGTERM/SIGINT or when its
stdin closes (so it never outlives the benchmark that started it).

    python benchmarks/stand_in_server.py --day 2026-11-20 --events 100000 --order oldest
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import date
from itertools import islice

from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import iter_synthetic_events

BATCH = 50_000  # events handed to the stand-in at a time: bounds the generator's own lists


def main(argv: list[str] | None = None) -> int:
    """Build the stand-in, load the day, serve until told to stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--day", type=date.fromisoformat, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--order", choices=("newest", "oldest"), default="oldest")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--audit-key", default="bench-audit-key")
    parser.add_argument("--import-key", default="bench-import-key")
    parser.add_argument("--configuration-id", default="00000000-0000-4000-8000-000000000001")
    args = parser.parse_args(argv)

    stand_in = PigmentStandIn(
        audit_key=args.audit_key, import_key=args.import_key,
        configuration_ids=(args.configuration_id,), page_size=args.page_size, order=args.order,
        status_polls_in_progress=0,
        # Pushes are kept in the stand-in's memory; the benchmark pushes big chunks.
        max_push_bytes=2 * 1024**3,
    )
    # No late events: every event is ingested 0.1-30 s after it happened, so the community
    # script's stop (the first event dated after the day) never cuts the day short.
    events = iter_synthetic_events(args.day, args.events, seed=args.seed, late_fraction=0.0)
    while batch := list(islice(events, BATCH)):
        stand_in.add_events(batch)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # The parent closing our stdin (or dying) also stops us.
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with stand_in:
        print(f"READY {stand_in.base_url} {args.events}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
