"""``PigmentAuditComponent``: one Pigment workspace's audit log, declared in YAML.

A deployment that keeps the audit logs of several Pigment workspaces declares each one in the
project's defs folder, ``pigment_audit_assets/defs/<name>/defs.yaml``::

    type: pigment_audit_assets.defs.component.PigmentAuditComponent
    attributes:
      name: acme                                 # asset key prefix and group: acme/raw_audit_events
      audit_key_env: ACME_PIGMENT_AUDIT_API_KEY    # the NAME of the variable, never the key
      import_key_env: ACME_PIGMENT_IMPORT_API_KEY
      import_configuration_id: 3f0c...             # optional until the first import
      storage_url: pigment_audit_data/acme         # default: pigment_audit_data/<name>
      timezone: Europe/Paris                       # default: UTC
      first_partition: "2026-06-01"                # default: the oldest day the 180 days reach
      schedule_hour: 4                             # default: 4 (in the timezone)
      lookback_days: 0                             # default: 0 (the watermark brings late events)
      chunk_size_mb: 480                           # default: 480
      base_url: https://pigment.app                # default: https://pigment.app

``dg scaffold defs PigmentAuditComponent <name>`` writes such a file. Each workspace gets the
three assets under its prefix, their checks, a job ``<name>_pigment_audit_job``, a schedule
``<name>_pigment_audit_daily`` and a resource ``pigment_<name>``; every workspace's steps share
the one ``pigment_api`` pool, since Pigment's rate limit is per IP address. Without any such
YAML the project keeps its single, environment-configured workspace (``definitions.py``).

A bad setting fails ``dg check defs`` with the field and the file in the message; a key whose
variable is not set fails the first step of a run that needs it, naming the variable, the field
and the file. Keys come from the environment only, through ``dagster.EnvVar``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
from dagster.components.core.component_tree import ComponentTree
from dagster.components.scaffold.scaffold import Scaffolder, ScaffoldRequest, scaffold_with
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from ..core.chunks import chunk_size_bytes
from ..core.client import check_base_url
from ..core.days import parse_day, parse_zone
from ..core.errors import ConfigError
from ..core.storage import OBJECT_SCHEMES, LocalStorage, storage_from_url
from .assets import build_assets
from .partitions import daily_partitions
from .resources import PigmentResource
from .schedules import DEFAULT_HOUR, DEFAULT_LOOKBACK_DAYS, build_daily_schedule

# Dagster's own notices from loading a defs folder (its loader calls preview and beta APIs of
# its own); repeated at every load and in each run's logs, and not the user's to act on. The
# exact Dagster pin keeps their behaviour fixed (as for the notices in assets.py).
for _notice, _category in (
        ("Function `load_definitions_from_module", dg.PreviewWarning),
        ("Class `LocalFileCodeReference`", dg.BetaWarning),
        ("Class `CodeReferencesMetadataValue`", dg.BetaWarning)):
    warnings.filterwarnings("ignore", message=_notice, category=_category)
warnings.filterwarnings("ignore", message="`parse_obj_as` is deprecated",
                        module="dagster._utils.pydantic_yaml")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# How variable names are written (ACME_AUDIT_KEY). A value of audit_key_env or
# import_key_env is shown in messages only then: one that is not may be a key pasted there.
_CONVENTIONAL_VARIABLE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
DEFAULT_STORAGE_FOLDER = "pigment_audit_data"


class WorkspaceConfigError(ConfigError):
    """A workspace's YAML is wrong: the message starts with the file and names the field."""


class WorkspacePigmentResource(PigmentResource):
    """The Pigment resource of one YAML workspace: its errors name the YAML field and file."""

    workspace: str = Field(default="", description="The workspace's name in its YAML.")
    source: str = Field(default="", description="The YAML file that declares the workspace.")
    audit_key_env: str = Field(default="", description="Variable holding the audit key.")
    import_key_env: str = Field(default="", description="Variable holding the import key.")

    def setting_names(self) -> dict[str, str]:
        """Errors name the workspace's YAML file and field (and the variable of a key)."""
        return {"audit": f"{self.source}: audit_key_env ({_shown(self.audit_key_env)})",
                "import": f"{self.source}: import_key_env ({_shown(self.import_key_env)})",
                "timezone": f"{self.source}: timezone",
                "storage_url": f"{self.source}: storage_url"}

    def configuration_id(self) -> str:
        """The import configuration id, or a ConfigError naming the field and the file."""
        if not self.import_configuration_id:
            raise WorkspaceConfigError(
                f"{self.source}: import_configuration_id is not set: workspace "
                f"{self.workspace!r}'s import asset needs the id of the Pigment import "
                "configuration to push into.")
        return self.import_configuration_id

    def check_settings(self, *, fetch: bool = False, push: bool = False) -> None:
        """As :meth:`PigmentResource.check_settings`; a missing key names its variable's field."""
        if fetch and not self.audit_api_key:
            raise WorkspaceConfigError(
                f"{self.source}: audit_key_env: the environment variable "
                f"{_shown(self.audit_key_env)} is not set: workspace {self.workspace!r}'s raw "
                "events asset needs an 'Audit logs' API key (a Security Admin creates it).")
        if push and not self.import_api_key:
            raise WorkspaceConfigError(
                f"{self.source}: import_key_env: the environment variable "
                f"{_shown(self.import_key_env)} is not set: workspace {self.workspace!r}'s "
                "import asset needs an 'Import or Export' API key (a Workspace Admin creates it).")
        super().check_settings(fetch=fetch, push=push)


def _shown(variable: str) -> str:
    """A key variable's name as messages show it: an unconventional one (``sk_live_x9``, not
    ``ACME_AUDIT_KEY``) may be a key pasted where its variable's name belongs."""
    if _CONVENTIONAL_VARIABLE.match(variable):
        return variable
    return "(its name is not shown: it is not written as variable names are, and may be a key)"


class _Attributes(BaseModel):
    """Base of the model Dagster checks a workspace's YAML with: it refuses nothing."""

    model_config = ConfigDict(extra="allow")


@functools.cache
def _lenient(strict: type[BaseModel]) -> type[BaseModel]:
    """``strict`` (the model Dagster derives from the component) with every field optional and
    of any type, and unknown fields kept. Dagster re-raises that model's errors with the value
    written (pydantic's ``input_value``, also in ``dg check defs``'s schema check), and a value
    may be a key pasted in the wrong place (``audit_api_key: sk-...``). ``load`` refuses the
    same things naming only the field. Descriptions and defaults stay in the schema."""
    fields: dict[str, Any] = {}
    for field, info in strict.model_fields.items():
        default = None if info.is_required() else info.default
        fields[field] = (Any, Field(default=default, description=info.description,
                                    alias=info.alias))
    return create_model(strict.__name__, __base__=_Attributes, **fields)


def _refusal(source: str, error: ValidationError) -> WorkspaceConfigError:
    """A pydantic error as a refusal naming the file and each field, without the values."""
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'attributes'}: {problem['msg']}"
        for problem in error.errors(include_input=False, include_url=False,
                                    include_context=False))
    return WorkspaceConfigError(f"{source}: {problems} (the values are not shown: one may be a "
                                "key written in the wrong place).")


class ScaffoldParams(BaseModel):
    """Options of ``dg scaffold defs PigmentAuditComponent <name>`` (all optional)."""

    import_configuration_id: str | None = Field(
        default=None, description="The Pigment import configuration to push into.")
    base_url: str | None = Field(default=None, description="Pigment's API host.")
    storage_url: str | None = Field(default=None, description="Folder of the files.")
    timezone: str | None = Field(default=None, description="IANA zone of the partitions.")
    first_partition: str | None = Field(default=None, description="First day, YYYY-MM-DD.")


_TEMPLATE = """\
# A Pigment workspace whose audit log this deployment keeps (README: "Several workspaces").
# Check it with `dg check defs`; see its assets with `dg list defs`.
type: {type_name}

attributes:
  # Asset key prefix and group: {name}/raw_audit_events, {name}/audit_events_csv, ...
  name: {name}
  # The NAMES of the environment variables that hold the keys; the keys never go in YAML.
  audit_key_env: {upper}_PIGMENT_AUDIT_API_KEY
  import_key_env: {upper}_PIGMENT_IMPORT_API_KEY
  # The Pigment import configuration the CSV is pushed into (the import fails without it).
  {configuration}
  # One folder per workspace (a path or file:// URL).
  storage_url: {storage_url}
  # Zone of the daily partitions and of the schedule.
  timezone: {timezone}
  # First day; without it, the oldest day Pigment's 180-day lookback still reaches.
  {first_partition}
  # The daily run: at this hour, for yesterday and the days before it (late events).
  schedule_hour: {hour}
  lookback_days: {lookback}
  # Largest push to Pigment, in MiB.
  chunk_size_mb: 480
  base_url: {base_url}
"""


class PigmentAuditScaffolder(Scaffolder[ScaffoldParams]):
    """Writes a commented ``defs.yaml`` for a workspace named after its folder."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        """The options ``dg scaffold defs`` accepts."""
        return ScaffoldParams

    def scaffold(self, request: ScaffoldRequest[ScaffoldParams]) -> None:
        """Write ``<folder>/defs.yaml``: the workspace's name is the folder's."""
        name = re.sub(r"\W", "_", request.target_path.name)
        if not _NAME.match(name):
            name = f"workspace_{name}"
        params = request.params or ScaffoldParams()
        configuration = (f"import_configuration_id: {_quote(params.import_configuration_id)}"
                         if params.import_configuration_id
                         else "# import_configuration_id: 00000000-0000-0000-0000-000000000000")
        first = (f"first_partition: {_quote(params.first_partition)}" if params.first_partition
                 else '# first_partition: "2026-01-01"')
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "defs.yaml").write_text(_TEMPLATE.format(
            type_name=request.type_name, name=name, upper=name.upper(),
            configuration=configuration, first_partition=first,
            storage_url=_quote(params.storage_url or f"{DEFAULT_STORAGE_FOLDER}/{name}"),
            timezone=_quote(params.timezone or "UTC"),
            base_url=_quote(params.base_url or "https://pigment.app"),
            hour=DEFAULT_HOUR, lookback=DEFAULT_LOOKBACK_DAYS))


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML)."""
    return json.dumps(value)


@scaffold_with(PigmentAuditScaffolder)
class PigmentAuditComponent(dg.Component, dg.Model, dg.Resolvable):
    """One Pigment workspace: raw audit events, CSV and Pigment import, each day.

    The workspace's ``name`` prefixes its asset keys (``<name>/raw_audit_events``) and is their
    group. The keys are read from the environment variables that ``audit_key_env`` and
    ``import_key_env`` name; they never go in YAML.
    """

    name: str = Field(description="The workspace's name: asset key prefix and group "
                                  "(letters, digits, _; starting with a letter).")
    audit_key_env: str = Field(description="Name of the environment variable that holds the "
                                           "workspace's Audit Logs API key (not the key).")
    import_key_env: str = Field(description="Name of the environment variable that holds the "
                                            "workspace's Import API key (not the key).")
    import_configuration_id: str | None = Field(
        default=None, description="The Pigment import configuration the CSV is pushed into; "
                                  "the import asset fails, naming this field, without it.")
    storage_url: str | None = Field(
        default=None, description="Folder of the workspace's files; default "
                                  "pigment_audit_data/<name>. One folder per workspace.")
    timezone: str = Field(default="UTC", description="IANA zone of the daily partitions.")
    first_partition: str | None = Field(
        default=None, description="First day (YYYY-MM-DD, quoted); default the oldest day "
                                  "Pigment's 180-day lookback still reaches.")
    schedule_hour: int = Field(default=DEFAULT_HOUR, description="Hour (0-23, in timezone) "
                                                                 "of the daily run.")
    lookback_days: int = Field(default=DEFAULT_LOOKBACK_DAYS,
                               description="Complete days each daily run re-scans in full "
                                           "(0-30); late events come with the watermark "
                                           "anyway.")
    chunk_size_mb: float = Field(default=480.0, description="Largest push to Pigment, in MiB.")
    base_url: str = Field(default="https://pigment.app", description="Pigment's API host.")

    # A value is never quoted by a refusal (built in Python or loaded from YAML): it may be a key.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    _source: str = PrivateAttr(default="")

    @classmethod
    def model(cls) -> type[BaseModel]:
        """The model Dagster checks the YAML with: lenient (see ``_lenient``); ``load`` checks."""
        return _lenient(super().model())

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Any:
        """Load from YAML, remembering the file so that every error can name it. Unknown,
        missing and mistyped fields are refused by name, their values never shown."""
        source = _yaml_file(context)
        written = set(attributes.model_fields_set) if attributes is not None else set()
        unknown = sorted((attributes.model_extra or {}) if attributes is not None else {})
        if unknown:
            hint = (" Keys never go in YAML: audit_key_env and import_key_env name the "
                    "environment variables that hold them."
                    if any("key" in field.lower() for field in unknown) else "")
            raise WorkspaceConfigError(
                f"{source}: {', '.join(unknown)}: not a field of a Pigment workspace (the "
                f"fields are {', '.join(cls.model().model_fields)}).{hint}")
        missing = [field for field, info in cls.model_fields.items()
                   if info.is_required() and field not in written]
        if missing:
            raise WorkspaceConfigError(
                f"{source}: {', '.join(missing)}: missing; a workspace needs its 'name' and the "
                "names of the variables that hold its keys (audit_key_env, import_key_env).")
        try:
            component = super().load(attributes, context)
        except ValidationError as error:
            raise _refusal(source, error) from None
        component._source = source
        return component

    # --- derived names -----------------------------------------------------------------------

    @property
    def source(self) -> str:
        """The YAML file that declares this workspace (or ``<name>`` when built in Python)."""
        return self._source or f"workspace {self.name}"

    @property
    def resource_key(self) -> str:
        """The key of the workspace's Pigment resource."""
        return f"pigment_{self.name}"

    @property
    def job_name(self) -> str:
        """The workspace's job: its three assets, one day or a range."""
        return f"{self.name}_pigment_audit_job"

    @property
    def schedule_name(self) -> str:
        """The workspace's daily schedule."""
        return f"{self.name}_pigment_audit_daily"

    def storage_root(self) -> Path | str:
        """Where the files go, resolved (what two workspaces may not share): a folder's path,
        or an object store's ``scheme://bucket/prefix``."""
        storage = storage_from_url(self.resolved_storage_url())
        if isinstance(storage, LocalStorage):
            return storage.root
        return storage.uri("").rstrip("/")

    def resolved_storage_url(self) -> str:
        """``storage_url``, or ``pigment_audit_data/<name>``."""
        return self.storage_url or f"{DEFAULT_STORAGE_FOLDER}/{self.name}"

    # --- validation ----------------------------------------------------------------------------

    def _fail(self, field: str, problem: str) -> WorkspaceConfigError:
        return WorkspaceConfigError(f"{self.source}: {field}: {problem}")

    def validate_settings(self) -> dg.DailyPartitionsDefinition:
        """Check every field; return the partitions. Errors name the field and the file."""
        if not _NAME.match(self.name):
            raise self._fail("name", f"{self.name!r} must be letters, digits and _, starting "
                                     "with a letter (it becomes an asset key prefix and group).")
        for field in ("audit_key_env", "import_key_env"):
            value = getattr(self, field)
            if not _VARIABLE.match(value):  # its value is not shown: it may be the key itself
                raise self._fail(field, "not an environment variable name (letters, digits and "
                                        "_, not starting with a digit): give the NAME of the "
                                        "variable that holds the key, not the key.")
        if self.audit_key_env == self.import_key_env:
            raise self._fail("import_key_env", "the same variable as audit_key_env: the two "
                                               "keys are different Pigment keys.")
        checks: list[tuple[str, Any]] = [
            ("timezone", lambda: parse_zone(self.timezone, "timezone")),
            ("base_url", lambda: check_base_url(self.base_url)),
            ("storage_url", self.storage_root),
            ("chunk_size_mb", lambda: chunk_size_bytes(self.chunk_size_mb, "chunk_size_mb")),
        ]
        if self.first_partition is not None:
            checks.append(("first_partition",
                           lambda: parse_day(str(self.first_partition), "first_partition")))
        for field, check in checks:
            try:
                check()
            except ConfigError as error:
                raise self._fail(field, str(error)) from None
        if not 0 <= self.schedule_hour <= 23:
            raise self._fail("schedule_hour", f"{self.schedule_hour} is not an hour from 0 to 23.")
        if not 0 <= self.lookback_days <= 30:
            raise self._fail("lookback_days", f"{self.lookback_days} is not from 0 to 30.")
        if self.first_partition is not None:
            today = datetime.now(parse_zone(self.timezone)).date()
            first = parse_day(str(self.first_partition), "first_partition")
            if first >= today:
                raise self._fail("first_partition", f"{first} is not in the past: the first "
                                 f"partition must be a complete day before today ({today}).")
        return daily_partitions(self.first_partition and str(self.first_partition),
                                self.timezone)

    # --- definitions -------------------------------------------------------------------------

    def build_resource(self) -> Any:
        """The workspace's resource; keys as ``EnvVar`` of the named variables when set."""
        return WorkspacePigmentResource.configure_at_launch(
            audit_api_key=_from_env(self.audit_key_env),
            import_api_key=_from_env(self.import_key_env),
            import_configuration_id=self.import_configuration_id,
            base_url=self.base_url, storage_url=self.resolved_storage_url(),
            timezone=self.timezone, chunk_size_mb=self.chunk_size_mb,
            workspace=self.name, source=self.source,
            # For its messages only; the UI shows the resource's config: no pasted key there.
            audit_key_env=_shown(self.audit_key_env), import_key_env=_shown(self.import_key_env),
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The workspace's assets, checks, job, schedule and resource."""
        partitions_def = self.validate_settings()
        assets = build_assets(partitions_def, key_prefix=[self.name], group=self.name,
                              resource_key=self.resource_key)
        job = dg.define_asset_job(
            self.job_name, selection=dg.AssetSelection.groups(self.name),
            executor_def=dg.in_process_executor,
            description=f"Workspace {self.name}: raw events, CSV and import of a day or a range.")
        schedule = build_daily_schedule(job, partitions_def, hour=self.schedule_hour,
                                        lookback_days=self.lookback_days,
                                        name=self.schedule_name)
        return dg.Definitions(assets=assets, jobs=[job], schedules=[schedule],
                              resources={self.resource_key: self.build_resource()})


def _from_env(variable: str) -> dg.EnvVar | None:
    """``EnvVar(variable)`` when set; else None, so the step that needs it names it."""
    return dg.EnvVar(variable) if os.environ.get(variable) else None


def _yaml_file(context: dg.ComponentLoadContext) -> str:
    """The component's YAML file, relative to the project root when inside it."""
    folder = Path(context.path)
    path = next((folder / name for name in ("defs.yaml", "component.yaml")
                 if (folder / name).exists()), folder)
    try:
        return str(path.relative_to(context.project_root))
    except ValueError:
        return str(path)


def check_distinct(workspaces: Sequence[PigmentAuditComponent]) -> None:
    """Refuse two workspaces with one name, or one storage folder (or one inside another)."""
    by_name: dict[str, PigmentAuditComponent] = {}
    for workspace in workspaces:
        other = by_name.setdefault(workspace.name.lower(), workspace)
        if other is not workspace:
            raise WorkspaceConfigError(
                f"{workspace.source}: name: {workspace.name!r} is the name of the workspace in "
                f"{other.source} too: each workspace needs its own name (its asset keys).")
    roots: list[tuple[Any, PigmentAuditComponent]] = []
    for workspace in workspaces:
        root = _same_store_name(workspace.storage_root())
        for other_root, other in roots:
            if _overlap(root, other_root):
                raise WorkspaceConfigError(
                    f"{workspace.source}: storage_url: {workspace.resolved_storage_url()!r} is "
                    f"(or overlaps) the storage of the workspace in {other.source} "
                    f"({other.resolved_storage_url()!r}): each workspace needs its own folder.")
        roots.append((root, workspace))


def _same_store_name(root: Path | str) -> Path | str:
    """``root`` with its scheme as the store it reaches: ``s3a://`` reads what ``s3://`` does,
    ``abfs://`` what ``az://`` does, so two workspaces on them would share every file. An Azure
    root is named by its account and container: ``container@account.dfs.core.windows.net``,
    or ``az://container`` with the environment's account."""
    if isinstance(root, Path):
        return root
    scheme, separator, rest = root.partition("://")
    store = OBJECT_SCHEMES.get(scheme.lower(), scheme)
    if store == "Azure Blob Storage":  # the account, then the container: account/container/...
        host, slash, path = rest.partition("/")
        container, at, account_host = host.partition("@")
        # The bare form's account is the environment's (the store cannot be made without one).
        account = (account_host.partition(".")[0] if at
                   else os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
                   or os.environ.get("AZURE_STORAGE_ACCOUNT", ""))
        rest = f"{account}/{container}{slash}{path}"
    return f"{store}{separator}{rest}"


def _overlap(first: Any, second: Any) -> bool:
    if isinstance(first, Path) and isinstance(second, Path):
        return first == second or first in second.parents or second in first.parents
    first_text, second_text = str(first).rstrip("/"), str(second).rstrip("/")
    return (first_text == second_text or first_text.startswith(second_text + "/")
            or second_text.startswith(first_text + "/"))


def load_workspaces(defs_module: ModuleType, project_root: Path) -> dg.Definitions | None:
    """The Definitions of every ``PigmentAuditComponent`` in ``defs_module``'s folder.

    None when the folder declares none, so the caller keeps the environment-configured single
    workspace. Validates every workspace (and that they are distinct) before building any.
    """
    tree = ComponentTree.from_module(defs_module=defs_module, project_root=project_root)
    workspaces = tree.get_all_components(of_type=PigmentAuditComponent)
    if not workspaces:
        return None
    for workspace in workspaces:
        workspace.validate_settings()
    check_distinct(workspaces)
    return tree.build_defs()
