"""Every ``PIGMENT_*`` variable the code reads reaches the code server and the runs of deploy/.

Docker Compose passes a container only the variables its ``environment:`` names, and the
DockerRunLauncher a run container only those its ``env_vars`` names: a setting missing there
is silently ignored, whatever deploy/.env says. The names come from the code itself (its string
constants), so a new setting cannot be forgotten in the deployment files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = REPOSITORY / "pigment_audit_assets"
DEPLOY = REPOSITORY / "deploy"
NAME = re.compile(r"PIGMENT_[A-Z0-9_]+")
# Variables the code reads that a deployment must NOT pass on, each with its reason. None so
# far: every setting may be set by a deployment (PIGMENT_AUDIT_POOL_STALE_SECONDS only matters
# to the code server's sensor, but passing it to the runs is harmless).
NOT_PASSED: dict[str, str] = {}


def code_variables() -> set[str]:
    """The ``PIGMENT_*`` names the package's code holds as string constants (the names it reads
    from the environment, e.g. ``HOUR_VARIABLE = "PIGMENT_AUDIT_SCHEDULE_HOUR"``)."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and NAME.fullmatch(node.value)):
                names.add(node.value)
    return names


def expected() -> set[str]:
    return code_variables() - set(NOT_PASSED)


def load(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text(encoding="utf-8"))


def test_the_code_reads_the_settings_the_readme_names() -> None:
    """The scan of the code finds the variables at all (a guard on the test itself)."""
    assert {"PIGMENT_AUDIT_API_KEY", "PIGMENT_AUDIT_STORAGE_URL", "PIGMENT_AUDIT_SCHEDULE_HOUR",
            "PIGMENT_AUDIT_SCRATCH_DIR", "PIGMENT_AUDIT_POOL_STALE_SECONDS"} <= code_variables()
    assert not set(NOT_PASSED) - code_variables()  # no stale exclusion


@pytest.mark.parametrize("service", ["user_code", "daemon"])
def test_compose_passes_every_setting_to_the_code_server_and_the_daemon(service: str) -> None:
    """The code server loads the definitions; the daemon hands its values to the runs."""
    environment = load("docker-compose.yaml")["services"][service]["environment"]
    assert sorted(expected() - set(environment)) == []
    for name in expected():  # from deploy/.env, not written in the file
        assert str(environment[name]).startswith("${" + name), (name, environment[name])


def test_the_run_launcher_passes_every_setting_to_the_runs() -> None:
    env_vars = load("compose/dagster.yaml")["run_launcher"]["config"]["env_vars"]
    assert sorted(expected() - set(env_vars)) == []


def test_the_env_example_lists_every_setting() -> None:
    listed = {match.group(1) for match in re.finditer(
        r"^#? ?(PIGMENT_[A-Z0-9_]+)=", (DEPLOY / ".env.example").read_text(encoding="utf-8"),
        re.MULTILINE)}
    assert sorted(expected() - listed) == []


def test_the_helm_code_server_has_every_setting_and_its_runs_get_them() -> None:
    """On Kubernetes the runs take the code server's ``env`` and ``envSecrets``
    (includeConfigInLaunchedRuns); the keys are in the Secret the file's header creates."""
    text = (DEPLOY / "helm" / "values.yaml").read_text(encoding="utf-8")
    in_secret = set(re.findall(r"--from-literal=(PIGMENT_[A-Z0-9_]+)=", text))
    values = yaml.safe_load(text)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "pigment-audit"} in deployment["envSecrets"]
    assert sorted(expected() - set(deployment["env"]) - in_secret) == []
    assert not in_secret & set(deployment["env"])  # a key never as a plain value
