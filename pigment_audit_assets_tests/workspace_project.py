"""A small `dg` project that uses ``PigmentAuditComponent``: for the tests and the demo.

Its own root module and defs folder, so YAML can be written without touching this repository's
``pigment_audit_assets/defs``; its ``definitions.py`` calls the project's ``build_definitions``
on that defs folder, as a deployment that uses the component as a library would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COMPONENT_TYPE = "pigment_audit_assets.defs.component.PigmentAuditComponent"

_PYPROJECT = """\
[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "{module}"
code_location_target_module = "{module}.definitions"
code_location_name = "{module}"
registry_modules = ["pigment_audit_assets.defs.component"]

[tool.dg.cli]
suppress_warnings = ["project_and_activated_venv_mismatch"]
"""

_DEFINITIONS = '''\
"""The workspaces declared in this project's defs folder."""

import importlib
from pathlib import Path

from pigment_audit_assets.definitions import build_definitions

defs = build_definitions(importlib.import_module(f"{__package__}.defs"),
                         Path(__file__).resolve().parent.parent)
'''


def write_project(folder: Path, module: str,
                  workspaces: Mapping[str, Mapping[str, Any] | str] | None = None) -> Path:
    """Write the project in ``folder`` with root module ``module``; return ``folder``.

    ``workspaces`` maps a defs sub-folder to its component's attributes (written as YAML) or to
    the literal text of its ``defs.yaml``.
    """
    package = folder / module
    (package / "defs").mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT.format(module=module))
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(_DEFINITIONS)
    (folder / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n"
        f"      module_name: {module}.definitions\n"
        f"      location_name: {module}\n"
        f"      working_directory: {folder}\n")
    for name, attributes in (workspaces or {}).items():
        write_workspace(folder, module, name, attributes)
    return folder


def write_workspace(folder: Path, module: str, name: str,
                    attributes: Mapping[str, Any] | str) -> Path:
    """Write ``<module>/defs/<name>/defs.yaml``; return its path."""
    path = folder / module / "defs" / name / "defs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(attributes, str):
        path.write_text(attributes)
    else:
        # JSON is YAML: every value keeps its type (a date stays a quoted string).
        lines = [f"type: {COMPONENT_TYPE}", "attributes:"]
        lines += [f"  {key}: {json.dumps(value)}" for key, value in attributes.items()]
        path.write_text("\n".join(lines) + "\n")
    return path
