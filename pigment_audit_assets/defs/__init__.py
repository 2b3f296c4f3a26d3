"""The Dagster layer: thin glue around :mod:`pigment_audit_assets.core`, one concern a module."""
