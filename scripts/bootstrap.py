"""Shared by the README's two commands: create ``.venv`` and install the project into it."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PIGMENT_AUDIT_VENV", ROOT / ".venv"))


def venv_python() -> Path:
    """The virtual environment's interpreter."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_installed() -> Path:
    """Create the virtual environment and install the project with its dev extras, once."""
    python = venv_python()
    if not python.exists():
        print(f"Creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    probe = subprocess.run(
        [str(python), "-c", "import pigment_audit_assets, dagster_webserver, pytest"],
        capture_output=True, cwd=ROOT,
    )
    # The dependencies changed since the last install (setup.cfg is newer than its stamp): a
    # venv made before a new dependency gets it too.
    stamp = VENV / ".installed-setup-cfg"
    current = (ROOT / "setup.cfg").read_bytes()
    if probe.returncode != 0 or not stamp.exists() or stamp.read_bytes() != current:
        print("Installing the project: pip install -e '.[dev]' ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                       check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", ".[dev]"],
                       cwd=ROOT, check=True)
        stamp.write_bytes(current)
    return python
