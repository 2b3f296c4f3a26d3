"""The README's demo command comes up: stand-in, dagster dev, the UI answering."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_starts_the_ui_against_the_stand_in() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PIGMENT_", "DAGSTER_"))}
    environment["PIGMENT_AUDIT_VENV"] = sys.prefix  # the environment running these tests
    done = subprocess.run([sys.executable, "scripts/demo.py", "--smoke", "--port", str(port)],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Pigment stand-in ready at http://127.0.0.1:" in done.stdout
    assert f"Dagster UI: http://127.0.0.1:{port}" in done.stdout
    assert (ROOT / ".demo" / "dagster_home" / "dagster.yaml").read_text() == (
        ROOT / "dagster.yaml").read_text()
    # The console shows what the user needs, not Dagster's notices about the project's choices.
    console = done.stdout + done.stderr
    for noise in ("BetaWarning", "PreviewWarning", "dev_command` is superseded",
                  "will not be used"):
        assert noise not in console, noise
