"""Keep a Pigment workspace's audit log: raw JSONL, flattened CSV, and a Pigment import, per day.

``pigment_audit_assets.core`` is the plain-Python core (no Dagster import) that the command line
and the Dagster assets in ``pigment_audit_assets.defs`` both call.
"""
