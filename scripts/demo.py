#!/usr/bin/env python3
"""Set up and start the demo: the Dagster UI against a local Pigment stand-in.

Usage: ``python3 scripts/demo.py`` from the repository root, on a machine with only Python 3.10+.

1. Creates ``.venv`` (once) and installs the project into it with ``pip install -e ".[dev]"``.
2. Starts the project's Pigment stand-in on 127.0.0.1, serving synthetic audit events for the
   last 14 days (no Pigment account, no credentials).
3. Starts ``dagster dev`` on this project with ``DAGSTER_HOME=.demo/dagster_home`` (holding this
   repository's ``dagster.yaml``) and the environment pointed at the stand-in; files are
   written under ``.demo/data``. Open http://127.0.0.1:3000 and materialize a day.

Ctrl-C stops both. ``--port N`` serves the UI on another port than 3000. ``--smoke`` starts
everything, waits until the UI answers, then stops: what CI runs to prove the command works.

``--workspaces 2`` shows several Pigment workspaces instead (README "Several workspaces"): two
stand-ins, each with its own keys, events and import configuration, and a small `dg` project in
``.demo/workspaces`` whose defs folder declares the two workspaces ``acme`` and ``globex`` in
YAML (``PigmentAuditComponent``); files go under ``.demo/data/acme`` and ``.demo/data/globex``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

from bootstrap import ROOT, ensure_installed

DEMO = ROOT / ".demo"
CONFIGURATION_ID = "00000000-0000-4000-8000-000000000001"
DEMO_DAYS = 14


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stand_in(python: Path, port: int, env: dict[str, str], *,
                   audit_key: str | None = None, import_key: str | None = None,
                   configuration_id: str = CONFIGURATION_ID, seed: int = 1,
                   events_per_day: int = 2000) -> subprocess.Popen[str]:
    """Start the stand-in and wait for its ready line (keys default to the env's)."""
    process = subprocess.Popen(
        [str(python), "-m", "pigment_audit_assets_tests.stand_in", "--port", str(port),
         "--days", str(DEMO_DAYS), "--events-per-day", str(events_per_day),
         "--late-fraction", "0.02", "--seed", str(seed),
         "--audit-key", audit_key or env["PIGMENT_AUDIT_API_KEY"], "--import-key",
         import_key or env["PIGMENT_IMPORT_API_KEY"], "--configuration-id", configuration_id],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise SystemExit(f"The Pigment stand-in did not start: {line!r}")
    print(line.strip(), flush=True)
    return process


def wait_for_ui(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll the webserver until it answers, or fail if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster dev exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/server_info", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # the webserver is still starting
    raise SystemExit(f"The Dagster UI did not answer at {url} within {timeout:.0f} s")


# The two workspaces of ``--workspaces 2``: name, import configuration, seed, events per day.
DEMO_WORKSPACES = (("acme", "00000000-0000-4000-8000-00000000aaaa", 1, 2000),
                   ("globex", "00000000-0000-4000-8000-00000000bbbb", 2, 1200))


def start_workspaces(python: Path, env: dict[str, str],
                     count: int) -> tuple[Path, list[subprocess.Popen[str]]]:
    """Start a stand-in per workspace and write the `dg` project declaring them in YAML.

    Each workspace's keys go in the environment variables its YAML names; the YAML holds
    only those names. Returns the project's workspace.yaml and the stand-ins.
    """
    sys.path.insert(0, str(ROOT))
    from pigment_audit_assets_tests.workspace_project import write_project

    stand_ins, workspaces = [], {}
    for name, configuration_id, seed, events in DEMO_WORKSPACES[:count]:
        upper = name.upper()
        env[f"{upper}_PIGMENT_AUDIT_API_KEY"] = f"demo-{name}-audit-key"
        env[f"{upper}_PIGMENT_IMPORT_API_KEY"] = f"demo-{name}-import-key"
        port = free_port()
        stand_ins.append(start_stand_in(
            python, port, env, audit_key=env[f"{upper}_PIGMENT_AUDIT_API_KEY"],
            import_key=env[f"{upper}_PIGMENT_IMPORT_API_KEY"],
            configuration_id=configuration_id, seed=seed, events_per_day=events))
        workspaces[name] = {
            "name": name, "audit_key_env": f"{upper}_PIGMENT_AUDIT_API_KEY",
            "import_key_env": f"{upper}_PIGMENT_IMPORT_API_KEY",
            "import_configuration_id": configuration_id,
            "storage_url": str(DEMO / "data" / name), "timezone": "UTC",
            "first_partition": (date.today() - timedelta(days=DEMO_DAYS)).isoformat(),
            "base_url": f"http://127.0.0.1:{port}"}
    project = DEMO / "workspaces"
    shutil.rmtree(project, ignore_errors=True)
    write_project(project, "pigment_audit_demo", workspaces)
    for name in workspaces:
        print(f"Workspace {name}: {project / 'pigment_audit_demo' / 'defs' / name / 'defs.yaml'}",
              flush=True)
    return project / "workspace.yaml", stand_ins


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Set up, then run the stand-in and dagster dev until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=3000, help="Dagster UI port (3000)")
    parser.add_argument("--smoke", action="store_true",
                        help="start, wait for the UI to answer, then stop")
    parser.add_argument("--workspaces", type=int, choices=(1, 2), default=1,
                        help="2: two Pigment workspaces in YAML, each with its own stand-in")
    args = parser.parse_args()
    # Stop cleanly (both children) on SIGTERM and SIGHUP too, not only on Ctrl-C; and even when
    # started in the background, where SIGINT arrives ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)
    python = ensure_installed()
    dagster_home = DEMO / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PIGMENT_AUDIT_API_KEY": "demo-audit-key",
        "PIGMENT_IMPORT_API_KEY": "demo-import-key",
        "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
        "PIGMENT_AUDIT_STORAGE_URL": str(DEMO / "data"),
        "PIGMENT_AUDIT_START_DATE": (date.today() - timedelta(days=DEMO_DAYS)).isoformat(),
        "PIGMENT_AUDIT_TIMEZONE": "UTC",
    }
    if args.workspaces > 1:
        for variable in [name for name in env if name.startswith("PIGMENT_")]:
            del env[variable]  # each workspace's settings are in its YAML
        workspace_file, stand_ins = start_workspaces(python, env, args.workspaces)
    else:
        stand_in_port = free_port()
        env["PIGMENT_BASE_URL"] = f"http://127.0.0.1:{stand_in_port}"
        workspace_file, stand_ins = ROOT / "workspace.yaml", [
            start_stand_in(python, stand_in_port, env)]
    # Two of dagster dev's console notices are not the user's to act on, so they are kept out:
    # - "dev_command is superseded ... use 'dg dev'": the project runs dagster dev on purpose
    #   (workspace.yaml, the README's commands); a warning filter for that one message only.
    # - "Found a dagster instance configuration value (dagster.yaml) in the current folder ...
    #   will not be used": false here, DAGSTER_HOME holds a copy of that very file. Dagster
    #   checks the folder it starts in, so it starts in DAGSTER_HOME; the project is installed
    #   in the environment, so the workspace loads from any folder.
    # The assets silence Dagster's beta and preview notices themselves (defs/assets.py).
    dagster_env = {**env, "PYTHONWARNINGS": ",".join(
        filter(None, [env.get("PYTHONWARNINGS"), "ignore:Function `dev_command` is superseded"]))}
    dagster = subprocess.Popen(
        [str(python), "-m", "dagster", "dev", "-w", str(workspace_file),
         "-h", "127.0.0.1", "-p", str(args.port)],
        cwd=dagster_home, env=dagster_env, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_for_ui(url, dagster, timeout=180)
        where = (f"Pigment stand-in at {env['PIGMENT_BASE_URL']}" if args.workspaces == 1
                 else f"{args.workspaces} workspaces, one stand-in each")
        print(f"\nDagster UI: {url}  ({where}, files in {DEMO / 'data'}). Ctrl-C to stop.\n",
              flush=True)
        if args.smoke:
            return 0
        dagster.wait()
        return dagster.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if dagster.poll() is None:
            os.killpg(dagster.pid, signal.SIGTERM)
            try:
                dagster.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dagster.pid, signal.SIGKILL)
        for stand_in in stand_ins:
            stand_in.terminate()
        for stand_in in stand_ins:
            stand_in.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
