"""The ``Definitions`` that ``workspace.yaml``, ``[tool.dagster]`` and ``[tool.dg]`` load.

Either the Pigment workspaces declared in YAML in the defs folder (``PigmentAuditComponent``,
README "Several workspaces"), or, when there is none, the single workspace configured from the
environment, exactly as before components existed: same asset keys, job, schedule, resource.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg

from .defs.assets import GROUP, build_assets
from .defs.component import load_workspaces
from .defs.partitions import START_DATE_VARIABLE, TIMEZONE_VARIABLE, daily_partitions
from .defs.pool_watch import pool_watch_definitions
from .defs.resources import CONFIGURATION_VARIABLE, PigmentResource
from .defs.schedules import (
    HOUR_VARIABLE,
    LOOKBACK_VARIABLE,
    build_daily_schedule,
    schedule_settings,
)


def _from_env(variable: str) -> dg.EnvVar | None:
    """``EnvVar(variable)`` when set; else None, so the step that needs it names it."""
    return dg.EnvVar(variable) if os.environ.get(variable) else None


def build_resource() -> Any:
    """The Pigment resource, every setting from its environment variable or its default.

    Configured at launch, with each environment setting as the default of its own field: run
    config that sets one field (``chunk_size_mb`` in the launchpad, say) keeps the others.
    A resource built directly (``PigmentResource(...)``) would put its values in one default
    for the whole config, which any run config replaces entirely.
    """
    optional = {
        "base_url": "PIGMENT_BASE_URL",
        "storage_url": "PIGMENT_AUDIT_STORAGE_URL",
        "timezone": TIMEZONE_VARIABLE,
    }
    settings = {field: dg.EnvVar(variable) for field, variable in optional.items()
                if os.environ.get(variable)}
    return PigmentResource.configure_at_launch(
        audit_api_key=_from_env("PIGMENT_AUDIT_API_KEY"),
        import_api_key=_from_env("PIGMENT_IMPORT_API_KEY"),
        import_configuration_id=_from_env(CONFIGURATION_VARIABLE),
        **settings,
    )


def build_definitions(defs_module: ModuleType | None = None,
                      project_root: Path | None = None) -> dg.Definitions:
    """The YAML workspaces of ``defs_module``'s folder, or the environment's one workspace.

    ``defs_module`` defaults to this project's ``pigment_audit_assets.defs``; another project
    that uses the component passes its own defs module and root.
    """
    if defs_module is None:
        defs_module = importlib.import_module(f"{__package__}.defs")
        project_root = Path(__file__).resolve().parent.parent
    workspaces = load_workspaces(defs_module, project_root or Path.cwd())
    if workspaces is not None:
        # In one process, as the single workspace's job (see build_environment_definitions).
        return dg.Definitions.merge(workspaces, dg.Definitions(executor=dg.in_process_executor))
    return build_environment_definitions()


def build_environment_definitions() -> dg.Definitions:
    """Assets, checks, job, schedule and resource for the environment's settings."""
    partitions_def = daily_partitions(os.environ.get(START_DATE_VARIABLE),
                                      os.environ.get(TIMEZONE_VARIABLE) or "UTC")
    assets = build_assets(partitions_def)
    job = dg.define_asset_job("pigment_audit_job", selection=dg.AssetSelection.groups(GROUP),
                              description="Raw events, CSV and import of a day or a range.")
    hour, lookback_days = schedule_settings(os.environ.get(HOUR_VARIABLE),
                                            os.environ.get(LOOKBACK_VARIABLE))
    schedule = build_daily_schedule(job, partitions_def, hour=hour, lookback_days=lookback_days)
    # In one process: the three steps run one after the other anyway, and so they share the
    # client's pacer (500 requests per 5 minutes) instead of each starting a fresh one.
    return dg.Definitions(assets=assets, jobs=[job], schedules=[schedule],
                          resources={"pigment": build_resource()},
                          executor=dg.in_process_executor)


defs = dg.Definitions.merge(build_definitions(), pool_watch_definitions())
