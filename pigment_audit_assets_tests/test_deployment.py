"""The deployment files of deploy/: what can be checked without Docker or a Kubernetes cluster.

Fast tests: every file parses; the instance files validate against Dagster's own instance schema
and build a psycopg2 URL; the image's command is the one the slow test runs; the compose services
and the files they mount; the Helm values against the chart's schema where the chart is at hand;
the Kubernetes Job that dagster-k8s's K8sRunLauncher builds from the values.

The slow test (marked slow, below) runs the production instance for real: PostgreSQL, a code
server, the webserver and the daemon as separate processes.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import itertools
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pigment_audit_assets.defs.component import DEFAULT_STORAGE_FOLDER
from pigment_audit_assets_tests.conftest import (
    AUDIT_KEY,
    CONFIGURATION_ID,
    IMPORT_KEY,
    S3_ENVIRONMENT,
    TODAY,
    s3_client,
)
from pigment_audit_assets_tests.schedule_support import UTC, raw_ids, truth_ids
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_dagster_dev import (
    BACKFILL_RUNS,
    DagsterDev,
    free_port,
    launch_backfill,
    stop,
    wait_for_backfills,
    wait_until_ready,
)

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
DEPLOY_FILES = ["dagster.yaml", "workspace.yaml", "compose/dagster.yaml",
                "docker-compose.yaml", "helm/values.yaml"]
PG_VARIABLES = ["DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD",
                "DAGSTER_PG_DB"]
SECRET_VARIABLES = ["PIGMENT_AUDIT_API_KEY", "PIGMENT_IMPORT_API_KEY", "DAGSTER_PG_PASSWORD"]


def load(relative: str) -> Any:
    return yaml.safe_load((DEPLOY / relative).read_text(encoding="utf-8"))


def dockerfile_cmd() -> list[str]:
    """The Dockerfile's CMD, in its exec form (a JSON array)."""
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.startswith("CMD ")]
    assert len(lines) == 1, lines
    command = json.loads(lines[0][len("CMD "):])
    assert isinstance(command, list), "CMD must be in exec form: signals reach the code server"
    return command


def code_server_command(host: str, port: int) -> list[str]:
    """The image's CMD with its address replaced: what the slow test runs, argument for argument."""
    command = dockerfile_cmd()
    assert command[command.index("-h") + 1] == "0.0.0.0"
    assert command[command.index("-p") + 1] == "4000"
    command[command.index("-h") + 1] = host
    command[command.index("-p") + 1] = str(port)
    return command


@pytest.mark.parametrize("relative", DEPLOY_FILES)
def test_every_deploy_file_parses(relative: str) -> None:
    assert isinstance(load(relative), dict)


@pytest.mark.parametrize("relative", ["dagster.yaml", "compose/dagster.yaml"])
def test_instance_files_validate_and_use_psycopg2(relative: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster._core.instance.config import dagster_instance_config
    from dagster_postgres.utils import pg_url_from_config

    for variable in PG_VARIABLES:
        monkeypatch.setenv(variable, "5432" if variable.endswith("PORT") else "x")
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((DEPLOY / relative).read_text())
    config, _ = dagster_instance_config(str(home))  # raises on any unknown or mistyped key
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_monitoring"]["enabled"] is True
    postgres = config["storage"]["postgres"]
    # Every connection setting comes from its variable, none written in the file.
    assert {key: value for key, value in postgres["postgres_db"].items() if key != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}}
    # What dagster-postgres builds from it (the env values resolved as the instance does).
    resolved = {key: (os.environ[value["env"]] if isinstance(value, dict) else value)
                for key, value in postgres["postgres_db"].items()}
    url = pg_url_from_config({"postgres_db": resolved})
    assert url.startswith("postgresql+psycopg2://"), url
    import sqlalchemy.engine

    assert sqlalchemy.engine.make_url(url).get_dialect().driver == "psycopg2"
    # The trap the scheme avoids: without it, SQLAlchemy 2.x asks for psycopg 3.
    bare = pg_url_from_config({"postgres_db": {k: v for k, v in resolved.items()
                                               if k != "scheme"}})
    assert sqlalchemy.engine.make_url(bare).get_dialect().driver != "psycopg2"


def test_compose_instance_is_the_production_one_plus_the_docker_launcher() -> None:
    production, compose = load("dagster.yaml"), load("compose/dagster.yaml")
    launcher = compose.pop("run_launcher")
    assert compose == production
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    from dagster._config import process_config
    from dagster_docker import DockerRunLauncher

    assert process_config(DockerRunLauncher.config_type(), launcher["config"]).success
    # Secrets are passed by name, their values from the daemon's environment.
    assert set(SECRET_VARIABLES) <= set(launcher["config"]["env_vars"])
    assert all("=" not in name for name in launcher["config"]["env_vars"])


def test_workspace_points_at_the_code_server() -> None:
    (entry,) = load("workspace.yaml")["load_from"]
    server = entry["grpc_server"]
    assert server == {"host": {"env": "DAGSTER_CODE_SERVER_HOST"},
                      "port": {"env": "DAGSTER_CODE_SERVER_PORT"},
                      "location_name": "pigment_audit_assets"}


def test_dockerfile_is_small_non_root_and_runs_the_code_server() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["FROM python:3.12-slim"]
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'pip install "' in text or "pip install ." in text
    assert dockerfile_cmd() == ["dagster", "code-server", "start", "-m",
                                "pigment_audit_assets.definitions", "-h", "0.0.0.0", "-p", "4000"]
    # The slow test runs exactly this command, only the address differs.
    assert code_server_command("127.0.0.1", 4123)[:-4] == dockerfile_cmd()[:-4]


def test_a_yaml_workspace_s_default_folder_is_on_the_volume_compose_shares() -> None:
    """``pigment_audit_data/<name>`` (the component's default storage) is relative to the
    image's working directory: linked there to the folder where Compose mounts one volume in
    the code server and in every run container, so a run's files outlive its container."""
    text = (DEPLOY / "Dockerfile").read_text()
    (workdir,) = [line.split()[1] for line in text.splitlines() if line.startswith("WORKDIR ")]
    links = re.findall(r"ln -s (\S+) (\S+)", text)
    targets = {link: target for target, link in links}
    target = targets[f"{workdir}/{DEFAULT_STORAGE_FOLDER}"]
    code_server = load("docker-compose.yaml")["services"]["user_code"]["volumes"]
    run_containers = load("compose/dagster.yaml")["run_launcher"]["config"][
        "container_kwargs"]["volumes"]
    shared = {volume.split(":")[0] for volume in code_server if volume.endswith(f":{target}")}
    assert shared and shared == {volume.split(":")[0] for volume in run_containers
                                 if volume.endswith(f":{target}")}
    assert shared <= set(load("docker-compose.yaml")["volumes"])  # a named volume


def test_compose_services_share_one_instance_and_workspace() -> None:
    compose = load("docker-compose.yaml")
    services = compose["services"]
    assert set(services) == {"postgres", "user_code", "webserver", "daemon"}
    # The code server is the image's own command (no override), the port the workspace's.
    assert "command" not in services["user_code"]
    assert services["user_code"]["build"]["dockerfile"] == "deploy/Dockerfile"
    for name in ("webserver", "daemon"):
        service = services[name]
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]
                  if volume.startswith("./")}
        assert mounts["/opt/dagster/dagster_home/dagster.yaml"] == "./compose/dagster.yaml"
        assert mounts["/opt/dagster/dagster_home/workspace.yaml"] == "./workspace.yaml"
        assert "/opt/dagster/dagster_home/workspace.yaml" in service["command"]
        env = service["environment"]
        assert (env["DAGSTER_CODE_SERVER_HOST"], env["DAGSTER_CODE_SERVER_PORT"]) == (
            "user_code", "4000")
        assert set(PG_VARIABLES) <= set(env)
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    # The daemon starts run containers: the Docker socket, and the Pigment settings to pass on.
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["daemon"]["volumes"]
    assert {"PIGMENT_AUDIT_API_KEY", "PIGMENT_IMPORT_API_KEY"} <= set(
        services["daemon"]["environment"])
    # The launcher's network is the compose network; secrets only as ${...} from the env file.
    assert load("compose/dagster.yaml")["run_launcher"]["config"]["network"] in compose["networks"]
    for service in services.values():
        for key, value in (service.get("environment") or {}).items():
            if key in SECRET_VARIABLES or key == "POSTGRES_PASSWORD":
                assert str(value).startswith("${"), (key, value)
    healthcheck = services["user_code"]["healthcheck"]["test"]
    assert healthcheck[1:] == ["dagster", "api", "grpc-health-check", "-p", "4000"]


def helm_values() -> dict[str, Any]:
    return load("helm/values.yaml")


def test_helm_values_match_the_production_instance() -> None:
    """The chart writes dagster.yaml itself: its values must say what deploy/dagster.yaml says."""
    values, production = helm_values(), load("dagster.yaml")
    pools = production["concurrency"]["pools"]
    assert values["concurrency"] == {"enabled": True, "pools": {
        "defaultLimit": pools["default_limit"], "granularity": pools["granularity"]}}
    monitoring = production["run_monitoring"]
    assert values["dagsterDaemon"]["runMonitoring"] == {
        "enabled": True, "startTimeoutSeconds": monitoring["start_timeout_seconds"],
        "pollIntervalSeconds": monitoring["poll_interval_seconds"],
        "freeSlotsAfterRunEndSeconds": monitoring["free_slots_after_run_end_seconds"]}
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["postgresql"]["postgresqlScheme"] == (
        production["storage"]["postgres"]["postgres_db"]["scheme"])
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    # The chart runs `dagster code-server start -h 0.0.0.0 -p <port>` + codeServerArgs: the CMD.
    command = dockerfile_cmd()
    assert deployment["codeServerArgs"] == command[3:5]
    assert deployment["port"] == int(command[command.index("-p") + 1])
    assert {"name": "pigment-audit"} in deployment["envSecrets"]
    # No secret value in the file: passwords and keys only from Secrets.
    assert values["postgresql"]["postgresqlPassword"] == ""
    assert not [key for key, value in walk(values) if key in SECRET_VARIABLES and value]


def walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair of a parsed YAML document, at any depth."""
    if isinstance(node, dict):
        return [pair for key, value in node.items() for pair in [(key, value), *walk(value)]]
    if isinstance(node, list):
        return [pair for item in node for pair in walk(item)]
    return []


def test_helm_values_against_the_charts_schema() -> None:
    """With the chart at hand (DAGSTER_HELM_CHART=path/to/helm/dagster), its values.schema.json.

    Nothing of the chart is vendored here, and this machine cannot download it: without the
    variable this test is skipped and says so.
    """
    chart = os.environ.get("DAGSTER_HELM_CHART")
    if not chart:
        pytest.skip("set DAGSTER_HELM_CHART to a checkout of dagster's helm/dagster (1.13.27) "
                    "to validate deploy/helm/values.yaml against its values.schema.json")
    import jsonschema

    schema = json.loads((Path(chart) / "values.schema.json").read_text())
    defaults = yaml.safe_load((Path(chart) / "values.yaml").read_text())
    merged = deep_merge(defaults, helm_values())
    jsonschema.validate(merged, schema)


def deep_merge(base: Any, override: Any) -> Any:
    """Helm's merge of a values file over the chart's defaults (maps merge, the rest replaces)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value)
        return merged
    return override


RELEASE = "dagster"  # `helm upgrade --install dagster ...` in the README


def chart_launcher_config(values: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The K8sRunLauncher's config as the chart's instance ConfigMap renders it from the values.

    The chart's template (helm/dagster/templates/helpers/instance/_run-launcher.tpl) reproduced
    by hand: helm and the chart are not on this machine. One difference, for the test only: the
    launcher reads a kubeconfig file (never contacted) instead of the in-cluster config.
    """
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "job_namespace": launcher.get("jobNamespace") or "default",
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": f"{RELEASE}",
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "dagster_home": "/opt/dagster/dagster_home",
        "env_config_maps": [f"{RELEASE}-pipeline-env",
                            *[item["name"] for item in launcher["envConfigMaps"]]],
        "env_secrets": [item["name"] for item in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volume_mounts": launcher["volumeMounts"],
        "volumes": launcher["volumes"],
        "run_k8s_config": {
            "pod_spec_config": launcher["runK8sConfig"]["podSpecConfig"]},
    }


def test_the_kubernetes_job_the_launcher_builds_from_the_values(tmp_path: Path) -> None:
    """dagster-k8s's own K8sRunLauncher and job builder, from the values, up to the API call."""
    dagster_k8s = pytest.importorskip(
        "dagster_k8s", reason="dagster-k8s comes with the dev extra: pip install -e '.[dev]'")
    from dagster import DagsterRun
    from dagster._config import process_config
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._grpc.types import ExecuteRunArgs
    from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

    values = helm_values()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {}}]}))
    processed = process_config(dagster_k8s.K8sRunLauncher.config_type(),
                               chart_launcher_config(values, kubeconfig))
    assert processed.success, processed.errors
    launcher = dagster_k8s.K8sRunLauncher.from_config_value(None, processed.value)

    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    # The origin the code server reports: the chart sets DAGSTER_CURRENT_IMAGE on it.
    origin = JobPythonOrigin(
        "pigment_audit_job",
        RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("pigment_audit_assets.definitions", "defs",
                                           working_directory=None),
            container_image=image, entry_point=["dagster"], container_context=None))
    run = DagsterRun(job_name="pigment_audit_job", run_id="0a1b2c3d-0000-4000-8000-000000000001",
                     job_code_origin=origin)
    # What K8sRunLauncher._launch_k8s_job_with_args does before create_namespaced_job.
    context = launcher.get_container_context_for_run(run)
    job_config = context.get_k8s_job_config(job_image=image, run_launcher=launcher)
    args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=None)
    job = construct_dagster_k8s_job(
        job_config=job_config, args=args.get_command_args(),
        job_name=get_job_name_from_run_id(run.run_id), component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name}])
    body = job.to_dict()
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image
    assert container["image_pull_policy"] == "IfNotPresent"
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    env_from = {(item["secret_ref"] or {}).get("name") for item in container["env_from"]}
    assert "pigment-audit" in env_from
    env = {item["name"]: item for item in container["env"]}
    assert env["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
    # The database password from its Secret, by reference.
    secret_ref = env["DAGSTER_PG_PASSWORD"]["value_from"]["secret_key_ref"]
    assert secret_ref == {"name": "dagster-postgresql-secret", "key": "postgresql-password",
                          "optional": None}
    assert env["DAGSTER_PG_PASSWORD"]["value"] is None
    assert pod["security_context"]["run_as_non_root"] is True
    assert pod["security_context"]["run_as_user"] == 10001
    # No secret value anywhere in the Job: keys and password by reference only.
    assert "dagster-postgresql-secret" in json.dumps(body, default=str)
    assert shlex.join(container["args"][:3]) == "dagster api execute_run"


# --- The production instance for real (slow) ------------------------------------------------

READY_SECONDS = 180.0
RUNS_SECONDS = 480.0
# Two backfills of two days each, launched at once: four days, two runs, one Pigment pool slot.
SLOW_DAYS = [TODAY - timedelta(days=offset) for offset in (8, 7, 5, 4)]
POOL_STEPS = {"raw_audit_events", "audit_events_import"}


def postgres_bin() -> Path:
    """The newest system PostgreSQL's server binaries (Debian's layout), else those of the
    pgserver wheel that the dev extras install."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.origin is not None:
            found = sorted(Path(spec.origin).parent.glob("pginstall/bin/initdb"))
    if not found:
        pytest.fail("no PostgreSQL server binaries: none under /usr/lib/postgresql and no "
                    "pgserver wheel; `pip install -e '.[dev]'` installs pgserver on Linux "
                    "x86_64, or install PostgreSQL (apt-get install postgresql)")
    return found[-1].parent


@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str
    log_path: Path

    def connect(self) -> Any:
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                password=self.password, dbname=self.database)


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the postgres user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free loopback port, password auth, removed afterwards."""
    binaries = postgres_bin()
    # Not under pytest's tmp_path: that folder is private to this user, the server's user differs.
    root = Path(tempfile.mkdtemp(prefix="pigment-audit-pg-"))
    password = secrets.token_urlsafe(18)
    data, pwfile, log_path = root / "data", root / "pwfile", root / "postgres.log"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    pwfile.chmod(0o600)
    port = free_port()
    subprocess.run(as_server_user([str(binaries / "initdb"), "-D", str(data), "-U", "dagster",
                                   "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"]),
                   check=True, capture_output=True)
    pwfile.unlink()
    start = as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log_path),
                            "-w", "-t", "60", "-o",
                            f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"])
    subprocess.run(start, check=True, capture_output=True)
    server = Postgres(port, "dagster", password, "dagster", log_path)
    try:
        import psycopg2

        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user="dagster",
                                                 password=password, dbname="postgres")) as conn:
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE dagster")
        yield server
    finally:
        subprocess.run(as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                                       "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Services:
    home: Path
    data: str  # PIGMENT_AUDIT_STORAGE_URL: s3://bucket/prefix on the moto server
    logs: list[Path]
    webserver: DagsterDev
    env: dict[str, str]

    def log_tail(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in self.logs)


def executable(name: str) -> str:
    """A console script of this virtual environment (dagster, dagster-webserver, ...)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 5) { status skipReason error { message } } } }
    ... on PythonError { message }
  }
}
"""


def pool_watch_ticks(services: Services) -> list[dict[str, Any]]:
    """The pool watch's latest ticks, over GraphQL (the daemon evaluates it in the code server)."""
    selector = {"repositoryLocationName": "pigment_audit_assets",
                "repositoryName": "__repository__", "sensorName": "pigment_pool_watch"}
    answer = services.webserver.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
    assert answer["__typename"] == "Sensor", answer
    assert answer["sensorState"]["status"] == "RUNNING"
    return list(answer["sensorState"]["ticks"])


def compose_command(service: str, home: Path, port: int) -> list[str]:
    """A compose service's command, for this machine: loopback, a free port, this DAGSTER_HOME."""
    command = list(load("docker-compose.yaml")["services"][service]["command"])
    replacements = {"-h": "127.0.0.1", "-p": str(port)}
    for index, argument in enumerate(command[:-1]):
        if argument == "-w":
            assert command[index + 1] == "/opt/dagster/dagster_home/workspace.yaml"
            command[index + 1] = str(home / "workspace.yaml")
        elif argument in replacements:
            command[index + 1] = replacements[argument]
    return command


def wait_for_code_server(port: int, env: dict[str, str], process: subprocess.Popen[bytes],
                         log_path: Path) -> None:
    """`dagster api grpc-health-check` until it answers SERVING (bounded)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the code server exited with {process.returncode}:\n"
                        f"{log_path.read_text(errors='replace')[-4000:]}")
        check = subprocess.run([executable("dagster"), "api", "grpc-health-check",
                                "-h", "127.0.0.1", "-p", str(port)],
                               env=env, capture_output=True, timeout=60)
        if check.returncode == 0:
            return
        time.sleep(1)  # polling interval while the code server loads the definitions
    pytest.fail(f"the code server did not answer within {READY_SECONDS:.0f} s:\n"
                f"{log_path.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def slow_pigment() -> Iterator[PigmentStandIn]:
    now = datetime.combine(TODAY - timedelta(days=1), dtime(12), tzinfo=UTC)
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100,
                        now=now) as server:
        for day in SLOW_DAYS:
            server.add_events(synthetic_events(day, 150, seed=day.toordinal(),
                                               late_fraction=0.05))
        yield server


@pytest.fixture
def services(postgres: Postgres, slow_pigment: PigmentStandIn, s3_url: str,
             tmp_path: Path) -> Iterator[Services]:
    """Code server, webserver and daemon apart, on deploy/dagster.yaml and deploy/workspace.yaml.

    Files on S3 (moto's server on 127.0.0.1): ``s3_url`` has set the standard AWS variables
    (keys, region, AWS_ENDPOINT_URL) in this environment, which every process inherits.
    """
    home, data = tmp_path / "dagster_home", s3_url
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    shutil.copy(DEPLOY / "workspace.yaml", home / "workspace.yaml")
    code_port, web_port = free_port(), free_port()
    off_hour = (datetime.now(UTC).hour + 12) % 24  # the daily schedule stays out of the way
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": postgres.user, "DAGSTER_PG_PASSWORD": postgres.password,
        "DAGSTER_PG_DB": postgres.database,
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(code_port),
        "PIGMENT_AUDIT_API_KEY": AUDIT_KEY, "PIGMENT_IMPORT_API_KEY": IMPORT_KEY,
        "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
        "PIGMENT_BASE_URL": slow_pigment.base_url,
        "PIGMENT_AUDIT_STORAGE_URL": data,
        "PIGMENT_AUDIT_START_DATE": (TODAY - timedelta(days=30)).isoformat(),
        "PIGMENT_AUDIT_TIMEZONE": "UTC",
        "PIGMENT_AUDIT_SCHEDULE_HOUR": str(off_hour),
    }
    logs = [tmp_path / name for name in ("code_server.log", "webserver.log", "daemon.log")]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        command = code_server_command("127.0.0.1", code_port)
        processes.append(spawn([executable(command[0]), *command[1:]], env, logs[0]))
        wait_for_code_server(code_port, env, processes[0], logs[0])
        # The webserver's and the daemon's commands of docker-compose.yaml, with the address on
        # loopback and the workspace file of this DAGSTER_HOME.
        for name, log_path in (("webserver", logs[1]), ("daemon", logs[2])):
            command = compose_command(name, home, web_port)
            processes.append(spawn([executable(command[0]), *command[1:]], env, log_path))
        webserver = DagsterDev(f"http://127.0.0.1:{web_port}", processes[1], logs[1])
        yield Services(home, data, [*logs, postgres.log_path], webserver, env)
    finally:
        for process in reversed(processes):
            stop(process)


def step_intervals(postgres: Postgres, run_ids: list[str]) -> list[tuple[float, float, str]]:
    """(start, end, run:step) of every pool step of the runs, from the event log in PostgreSQL."""
    with contextlib.closing(postgres.connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT run_id, step_key, dagster_event_type, timestamp FROM event_logs "
                       "WHERE run_id = ANY(%s) AND dagster_event_type IN "
                       "('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE')", (run_ids,))
        rows = cursor.fetchall()
    starts: dict[tuple[str, str], float] = {}
    ends: dict[tuple[str, str], float] = {}
    for run_id, step_key, kind, stamp in rows:
        if step_key not in POOL_STEPS:
            continue
        moment = stamp.replace(tzinfo=UTC).timestamp()
        (starts if kind == "STEP_START" else ends)[(run_id, step_key)] = moment
    assert set(starts) == set(ends), (starts, ends)
    return sorted((starts[key], ends[key], ":".join(key)) for key in starts)


@pytest.mark.slow
def test_production_instance_runs_two_backfills_one_pool_step_at_a_time(
        services: Services, postgres: Postgres, slow_pigment: PigmentStandIn, scratch: Path,
        s3_endpoint: str, tmp_path: Path) -> None:
    from pigment_audit_assets.core.storage import storage_from_url

    storage = storage_from_url(services.data)
    dev = services.webserver
    wait_until_ready(dev)
    keys = [day.isoformat() for day in SLOW_DAYS]
    # Two backfills at once, as two clicks in the UI would launch them.
    backfills = [launch_backfill(dev, keys[:2]), launch_backfill(dev, keys[2:])]
    statuses = wait_for_backfills(services.webserver, backfills, seconds=RUNS_SECONDS,
                                  log_tail=services.log_tail)
    assert set(statuses) <= {"COMPLETED", "COMPLETED_SUCCESS"}, services.log_tail()
    run_ids = []
    for backfill_id in backfills:
        runs = dev.graphql(BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
        assert len(runs) == 1 and runs[0]["status"] == "SUCCESS", runs
        run_ids.append(runs[0]["runId"])

    # The days are exact against the stand-in's truth, each event pushed once.
    pushed = Counter(row["id"] for row in slow_pigment.pushed_rows())
    expected: list[str] = []
    for day in SLOW_DAYS:
        truth = truth_ids(slow_pigment, day)
        raw = storage.read_bytes(storage.raw_key(day)) or b""
        assert truth and sorted(orjson.loads(line)["id"] for line in raw.splitlines()) == truth
        rows = csv.DictReader(io.StringIO((storage.read_bytes(storage.csv_key(day)) or b"")
                                          .decode(), newline=""))
        assert sorted(row["id"] for row in rows) == truth
        record = orjson.loads(storage.read_bytes(storage.import_record_key(day)) or b"{}")
        assert sorted(event_id for entry in record["imports"]
                      for event_id in entry["eventIds"]) == truth
        expected += truth
    assert max(pushed.values()) == 1 and sorted(pushed) == sorted(expected)
    # Nothing of the data on local disk: scratch emptied after each step, no local data folder.
    assert list(scratch.iterdir()) == []
    assert not [path for path in (REPOSITORY / "pigment_audit_data", tmp_path / "data",
                                  services.home / "pigment_audit_data") if path.exists()]

    # The runs are in PostgreSQL (nowhere else: DAGSTER_HOME holds no SQLite database).
    with contextlib.closing(postgres.connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (run_ids,))
        assert sorted(cursor.fetchall()) == sorted((run_id, "SUCCESS") for run_id in run_ids)
    assert not list(services.home.rglob("*.db"))

    # The two runs overlapped, but their Pigment steps never did: one pool slot.
    with contextlib.closing(postgres.connect()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT start_time, end_time FROM runs WHERE run_id = ANY(%s)", (run_ids,))
        (_, first_end), (second_start, _) = sorted(cursor.fetchall())
    assert second_start < first_end, "the runs did not overlap: nothing for the pool to do"
    intervals = step_intervals(postgres, run_ids)
    assert len(intervals) == 2 * len(POOL_STEPS), intervals
    for (_, end, before), (start, _, after) in itertools.pairwise(intervals):
        assert end <= start, f"{before} ended at {end}, after {after} started at {start}"

    # The pool watch runs on this instance (on by default) and found nothing to report.
    ticks = poll(lambda: pool_watch_ticks(services), "tick of the pool watch",
                 services.logs[2])
    assert {tick["status"] for tick in ticks} == {"SKIPPED"}, ticks
    assert "held by a live run, or free" in ticks[0]["skipReason"]

    # No Pigment key, S3 secret key or database password in the logs, the files under
    # DAGSTER_HOME, the objects on S3, the event log or the run records.
    secret_values = [AUDIT_KEY, IMPORT_KEY, S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
                     postgres.password]
    for path in [*services.logs, *services.home.rglob("*")]:
        if path.is_file():
            content = path.read_bytes()
            assert not [s for s in secret_values if s.encode() in content], path
    bucket = services.data.removeprefix("s3://").split("/")[0]
    client = s3_client(s3_endpoint)
    objects = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert len(objects) >= 3 * len(SLOW_DAYS)  # raw, CSV and import record of every day
    for listed in objects:
        content = client.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
        assert not [s for s in secret_values if s.encode() in content], listed["Key"]
    with contextlib.closing(postgres.connect()) as conn, conn.cursor() as cursor:
        for table, column in (("event_logs", "event"), ("runs", "run_body")):
            for secret_value in secret_values:
                cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} LIKE %s",
                               (f"%{secret_value}%",))
                assert cursor.fetchone() == (0,), (table, column)


# --- A pool slot left by a run killed outside the daemon ------------------------------------

POOL = "pigment_api"
FREE_SCRIPT = REPOSITORY / "scripts" / "free_pool_slots.py"


@pytest.fixture
def local_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the repository's dagster.yaml (SQLite, the pool limited to 1)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPOSITORY / "dagster.yaml", home / "dagster.yaml")
    return home


def add_run(instance: Any, status: Any) -> str:
    import dagster as dg

    run = dg.DagsterRun(job_name="pigment_audit_job", run_id=make_run_id(), status=status)
    instance.add_run(run)
    return run.run_id


def claim(instance: Any, run_id: str, step_key: str) -> bool:
    """Claim a slot as a step does (InstanceConcurrencyContext): the default limit first."""
    instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
    return instance.event_log_storage.claim_concurrency_slot(POOL, run_id, step_key).is_claimed


def make_run_id() -> str:
    import uuid

    return str(uuid.uuid4())


def test_pool_watch_names_a_quiet_holder_only_when_a_step_waits(local_home: Path) -> None:
    import dagster as dg

    from pigment_audit_assets.defs.pool_watch import find_stuck_slots

    with dg.DagsterInstance.from_config(str(local_home)) as instance:
        holder = add_run(instance, dg.DagsterRunStatus.STARTED)
        assert claim(instance, holder, "raw_audit_events")
        # Holding the slot with nobody waiting: nothing to say, however quiet.
        assert find_stuck_slots(instance, stale_seconds=0) == []
        waiter = add_run(instance, dg.DagsterRunStatus.STARTED)
        assert not claim(instance, waiter, "raw_audit_events")
        # Quiet for less than the threshold: a run that works may be silent for a while.
        assert find_stuck_slots(instance, stale_seconds=3600) == []
        (stuck,) = find_stuck_slots(instance, stale_seconds=0)
        assert (stuck.run_id, stuck.step_key, stuck.status) == (holder, "raw_audit_events",
                                                                "STARTED")
        assert stuck.waiting == ((waiter, "raw_audit_events"),)
        message = stuck.message()
        assert holder in message and waiter in message
        assert f"python scripts/free_pool_slots.py --run {holder}" in message


def test_pool_watch_names_an_ended_holder_after_run_monitorings_grace(local_home: Path) -> None:
    import dagster as dg

    from pigment_audit_assets.defs.pool_watch import ENDED_GRACE_SECONDS, find_stuck_slots

    with dg.DagsterInstance.from_config(str(local_home)) as instance:
        holder = add_run(instance, dg.DagsterRunStatus.STARTED)
        assert claim(instance, holder, "audit_events_import")
        instance.report_run_failed(instance.get_run_by_id(holder), message="worker gone")
        ended = instance.get_run_record_by_id(holder).end_time
        free_after = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
        # Within run monitoring's own delay (it frees slots of ended runs): not yet.
        assert find_stuck_slots(instance, now=ended + free_after) == []
        (stuck,) = find_stuck_slots(instance, now=ended + free_after + ENDED_GRACE_SECONDS + 1)
        assert (stuck.run_id, stuck.status) == (holder, "FAILURE")
        assert "which ended (FAILURE)" in stuck.message()


def test_pool_watch_sensor_warns_once_in_the_waiting_run_and_the_script_frees_the_slot(
        local_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dagster as dg

    from pigment_audit_assets.defs.pool_watch import STALE_VARIABLE, pigment_pool_watch

    monkeypatch.setenv(STALE_VARIABLE, "0")
    with dg.DagsterInstance.from_config(str(local_home)) as instance:
        storage = instance.event_log_storage
        holder = add_run(instance, dg.DagsterRunStatus.STARTED)
        waiter = add_run(instance, dg.DagsterRunStatus.STARTED)
        assert claim(instance, holder, "raw_audit_events")
        assert not claim(instance, waiter, "raw_audit_events")

        def warnings_in_waiter() -> list[Any]:
            return [entry for entry in instance.all_logs(waiter)
                    if entry.level == logging.WARNING and holder in entry.message]

        cursor = None
        for _ in range(2):  # two ticks: the waiting run is told once
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            with caplog.at_level(logging.WARNING):
                result = pigment_pool_watch(context)
            assert isinstance(result, dg.SkipReason)
            assert holder in (result.skip_message or "")
            cursor = context.cursor
            assert len(warnings_in_waiter()) == 1
        assert any(record.levelno == logging.WARNING and holder in record.getMessage()
                   for record in caplog.records)
        command = f"python scripts/free_pool_slots.py --run {holder}"
        assert command in warnings_in_waiter()[0].message

        # The documented command, as a user would run it: the slot goes to the waiting step.
        env = {**os.environ, "DAGSTER_HOME": str(local_home)}
        shown = subprocess.run([sys.executable, str(FREE_SCRIPT)], env=env, cwd=REPOSITORY,
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert f"held by run {holder} step raw_audit_events (STARTED)" in shown.stdout
        assert f"waiting: run {waiter} step raw_audit_events" in shown.stdout
        freed = subprocess.run([sys.executable, *shlex.split(command)[1:], "--pool", POOL],
                               env=env, cwd=REPOSITORY, capture_output=True, text=True,
                               timeout=120)
        assert freed.returncode == 0, freed.stderr
        info = storage.get_concurrency_info(POOL)
        assert [slot.run_id for slot in info.claimed_slots] == []
        assert [(step.run_id, step.assigned_timestamp is not None)
                for step in info.pending_steps] == [(waiter, True)]
        assert claim(instance, waiter, "raw_audit_events")
        assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
        result = pigment_pool_watch(dg.build_sensor_context(instance=instance, cursor=cursor))
        assert holder not in (result.skip_message or "")


@pytest.mark.slow
def test_a_run_killed_with_sigkill_keeps_its_slot_until_the_documented_command_frees_it(
        local_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `dagster asset materialize` of a day; the first killed with kill -9 in its pool step."""
    import signal

    import dagster as dg

    from pigment_audit_assets.defs.pool_watch import STALE_VARIABLE, pigment_pool_watch
    from pigment_audit_assets_tests.stand_in import Fault

    day = TODAY - timedelta(days=6)
    now = datetime.combine(TODAY - timedelta(days=1), dtime(12), tzinfo=UTC)
    data = tmp_path / "data"
    with PigmentStandIn(audit_key=AUDIT_KEY, import_key=IMPORT_KEY,
                        configuration_ids=(CONFIGURATION_ID,), page_size=100,
                        now=now) as pigment:
        pigment.add_events(synthetic_events(day, 120, seed=day.toordinal()))
        # The first scan's first page takes 25 s: the step holds the slot meanwhile.
        pigment.inject(Fault("slow", endpoint="audit", delay=25.0))
        env = {**os.environ, "DAGSTER_HOME": str(local_home),
               "PIGMENT_AUDIT_API_KEY": AUDIT_KEY, "PIGMENT_IMPORT_API_KEY": IMPORT_KEY,
               "PIGMENT_IMPORT_CONFIGURATION_ID": CONFIGURATION_ID,
               "PIGMENT_BASE_URL": pigment.base_url, "PIGMENT_AUDIT_STORAGE_URL": str(data),
               "PIGMENT_AUDIT_START_DATE": (TODAY - timedelta(days=30)).isoformat(),
               "PIGMENT_AUDIT_TIMEZONE": "UTC"}
        command = [executable("dagster"), "asset", "materialize", "-m",
                   "pigment_audit_assets.definitions", "--select", "raw_audit_events",
                   "--partition", day.isoformat()]
        first = spawn(command, env, tmp_path / "first.log")
        second: subprocess.Popen[bytes] | None = None
        try:
            with dg.DagsterInstance.from_config(str(local_home)) as instance:
                storage = instance.event_log_storage

                def holders() -> list[str]:
                    return [slot.run_id for slot in storage.get_concurrency_info(POOL)
                            .claimed_slots]

                holder = poll(lambda: (holders() or [None])[0], "a run holding the slot",
                              tmp_path / "first.log")
                os.killpg(first.pid, signal.SIGKILL)
                first.wait(timeout=30)
                assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED

                second = spawn(command, env, tmp_path / "second.log")
                waiter = poll(lambda: next((step.run_id for step in
                                            storage.get_concurrency_info(POOL).pending_steps
                                            if step.run_id != holder), None),
                              "the second run waiting for the slot", tmp_path / "second.log")
                assert second.poll() is None and holders() == [holder]

                # The sensor names the killed run, in its tick and in the waiting run's log.
                monkeypatch.setenv(STALE_VARIABLE, "0")
                result = pigment_pool_watch(dg.build_sensor_context(instance=instance))
                assert holder in (result.skip_message or "")
                told = [entry.message for entry in instance.all_logs(waiter)
                        if entry.level == logging.WARNING and holder in entry.message]
                assert len(told) == 1 and "free_pool_slots.py --run" in told[0]

                freed = subprocess.run([sys.executable, str(FREE_SCRIPT), "--run", holder],
                                       env=env, cwd=REPOSITORY, capture_output=True,
                                       text=True, timeout=120)
                assert freed.returncode == 0, freed.stdout + freed.stderr
                assert second.wait(timeout=RUNS_SECONDS) == 0, (
                    (tmp_path / "second.log").read_text(errors="replace")[-4000:])
                assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
                assert instance.get_run_by_id(waiter).status == dg.DagsterRunStatus.SUCCESS
                assert holders() == []
            assert sorted(raw_ids(data, day)) == truth_ids(pigment, day)
        finally:
            for process in (first, second):
                if process is not None:
                    stop(process)


def poll(probe: Any, what: str, log_path: Path) -> Any:
    """probe() until it gives something (bounded)."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)  # polling interval
    pytest.fail(f"no {what} within {READY_SECONDS:.0f} s:\n"
                f"{log_path.read_text(errors='replace')[-4000:]}")


TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId, terminatePolicy: MARK_AS_CANCELED_IMMEDIATELY) {
    __typename
    ... on TerminateRunSuccess { run { status } }
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""


@pytest.mark.slow
def test_force_termination_frees_a_killed_runs_slot_through_run_monitoring(
        services: Services, slow_pigment: PigmentStandIn, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI's way on the production instance: force termination, then run monitoring."""
    import signal

    import dagster as dg

    from pigment_audit_assets_tests.stand_in import Fault

    for variable in PG_VARIABLES:  # this process opens the instance too
        monkeypatch.setenv(variable, services.env[variable])
    slow_pigment.inject(Fault("slow", endpoint="audit", delay=25.0))
    log_path = tmp_path / "killed.log"
    killed = spawn([executable("dagster"), "asset", "materialize", "-m",
                    "pigment_audit_assets.definitions", "--select", "raw_audit_events",
                    "--partition", SLOW_DAYS[0].isoformat()], services.env, log_path)
    try:
        with dg.DagsterInstance.from_config(str(services.home)) as instance:
            def holders() -> list[str]:
                return [slot.run_id for slot in
                        instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]

            holder = poll(lambda: (holders() or [None])[0], "a run holding the slot", log_path)
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait(timeout=30)
            wait_until_ready(services.webserver)
            answer = services.webserver.graphql(TERMINATE, {"runId": holder})["terminateRun"]
            assert answer == {"__typename": "TerminateRunSuccess",
                              "run": {"status": "CANCELED"}}, answer
            assert holders() == [holder]  # the slot stays until run monitoring frees it
            monitoring = load("dagster.yaml")["run_monitoring"]
            deadline = time.monotonic() + (monitoring["free_slots_after_run_end_seconds"]
                                           + 3 * monitoring["poll_interval_seconds"] + 60)
            while holders() and time.monotonic() < deadline:
                time.sleep(1)  # polling interval while the daemon's run monitoring works
            assert holders() == [], services.log_tail()
    finally:
        stop(killed)
