#!/usr/bin/env python3
"""The README's test command: set up ``.venv`` if needed, lint with ruff, run the test suite.

Extra arguments go to pytest (for example ``-k cli`` or ``-m 'not slow'``).
"""

from __future__ import annotations

import subprocess
import sys

from bootstrap import ROOT, ensure_installed


def main() -> int:
    """Lint, then test; the exit code is pytest's (or ruff's if linting fails)."""
    python = ensure_installed()
    lint = subprocess.run([str(python), "-m", "ruff", "check", "."], cwd=ROOT)
    if lint.returncode != 0:
        return lint.returncode
    return subprocess.run([str(python), "-m", "pytest", *sys.argv[1:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
