"""The one configuration file: load, merge defaults into targets, validate once.

The file holds connection ids and knobs, never secrets. Every error names the file, the field,
the bad value and the fix, because it surfaces as an import error in the Airflow UI.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pg_backup.core.errors import ConfigError
from pg_backup.core.keys import check_recipient
from pg_backup.core.names import DEFAULT_DESTINATION, Stage, dag_ids
from pg_backup.core.params import KEEP_DAYS_MAX, KEEP_DAYS_MIN
from pg_backup.core.redact import redact, secret_kind

__all__ = ["Config", "ConfigError", "TargetConfig", "load_config", "parse_config"]

CONFIG_ENV = "PG_BACKUP_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "dags" / "pg_backup.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Every duration of the file lies in (0, 10 years]: a timeout, budget, SLA or retry delay of
# zero, below zero or of centuries is a typo, and Python's timedelta overflows further out.
DURATION_MAX = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """Turn ``90s``, ``30m``, ``2h`` or ``1d`` (or a number of seconds) into a timedelta.

    :raises ValueError: not a duration, or not in (0, 3650d]
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: write it like 90s, 30m, 2h or 1d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    # "not <=" also refuses NaN, which compares false with everything.
    if not 0 < seconds <= DURATION_MAX.total_seconds():
        raise ValueError("must be more than 0 and at most 3650d: write it like 90s, 30m, 2h or 1d")
    return timedelta(seconds=seconds)


def parse_size(value: Any) -> int:
    """Turn ``64MiB``, ``1G`` or a plain number of bytes into bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size: write it like 64MiB, 512M or 2G")
    unit = (match.group(2) or "").lower()[:1]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def check_cron(value: str) -> str:
    """Accept a cron expression (or @daily-style preset), else name the expected form."""
    from croniter import croniter

    if not croniter.is_valid(value):
        raise ValueError("not a cron expression: write it like '0 2 * * *' or '@daily'")
    return value


_WHERE_SECRETS_GO = (
    "secrets belong in an Airflow connection (Admin > Connections, an AIRFLOW_CONN_<ID> "
    "variable or a secrets backend); write that connection's id here"
)


def check_conn_id(value: Any) -> Any:
    """A connection id, never a secret: refuse a URI, password or key without echoing it."""
    kind = secret_kind(value) if isinstance(value, str) else None
    if kind is None and isinstance(value, str) and "://" in value:
        kind = "a URI"
    if kind is not None:
        raise ValueError(f"holds {kind} (not shown), not a connection id: {_WHERE_SECRETS_GO}")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Cron = Annotated[str, AfterValidator(check_cron)]
Size = Annotated[int, BeforeValidator(parse_size)]
ConnId = Annotated[
    str, BeforeValidator(check_conn_id), Field(pattern=r"^[A-Za-z0-9_.\-]+$", max_length=250)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectLock(_Model):
    """S3 Object Lock retention applied to every uploaded object."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    days: int = Field(30, ge=1, le=36500)


class StorageConfig(_Model):
    """Where backup sets go: ``s3://bucket/prefix`` or ``file:///absolute/path``."""

    url: str = Field(description="s3://bucket/prefix or file:///absolute/path")
    aws_conn_id: ConnId = "aws_default"
    sweep_aws_conn_id: ConnId | None = None
    storage_class: str | None = None
    sse_kms_key_id: str | None = None
    object_lock: ObjectLock | None = None
    multipart_chunksize: Size = Field(64 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        authority = value.split("://", 1)[-1].split("/", 1)[0]
        if "@" in authority or secret_kind(value):
            raise ValueError(
                "holds credentials (not shown): write the URL without them, and put the key "
                "in the Airflow connection named by storage.aws_conn_id (its login and password)"
            )
        if value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
                raise ValueError(
                    f"{bucket!r} is not a valid S3 bucket name: use 3-63 characters of lower-case "
                    "letters, digits, dots and hyphens, starting and ending with a letter or digit"
                )
            return value.rstrip("/")
        if value.startswith("file://"):
            path = value[7:]
            if not path.startswith("/"):
                raise ValueError("a file:// URL needs an absolute path, like file:///srv/pg_backup")
            return value.rstrip("/") if path != "/" else value
        raise ValueError("must start with s3:// or file://")


DESTINATION_NAME = re.compile(r"[a-z][a-z0-9_]{0,23}")


class DumpConfig(_Model):
    """How pg_dump runs."""

    pg_bin_dir: str | None = Field(None, description="directory holding pg_dump/pg_restore")
    schemas: list[str] = Field(default_factory=list, description="dump only these schemas")
    exclude_schemas: list[str] = Field(default_factory=list)
    lock_wait_timeout: Duration = timedelta(minutes=5)
    jobs: int = Field(1, ge=1, le=64)


class CompressConfig(_Model):
    """zstd settings for the compress stage."""

    # Level 1 by the bench's curve on the voting dump (docs/benchmark.md): against level 3 it
    # is both faster (about 390 vs 175 MB/s on one core) and 5% smaller; long-distance matching
    # saves under 2% more at less than half the speed; only levels of 12 and up reach 0.9x gzip.
    level: int = Field(1, ge=1, le=22)
    threads: int = Field(0, ge=0, le=256, description="0 means all cores")


class EncryptionConfig(_Model):
    """age public keys the backup is encrypted to; the private key lives in a connection."""

    recipients: list[str] = Field(min_length=1)
    identity_conn_id: ConnId = "pg_backup_age_identity"
    # Public keys this deployment encrypted to before a rotation: its sets made for them are
    # still its own (retention may expire them); sets for any other key are foreign.
    retired_recipients: list[str] = Field(default_factory=list)

    @property
    def own_keys(self) -> list[str]:
        """Every public key this deployment's sets may be encrypted to (current and retired)."""
        return [*self.recipients, *self.retired_recipients]

    @field_validator("recipients", "retired_recipients")
    @classmethod
    def _recipients(cls, values: list[str]) -> list[str]:
        # Pure Python: pyrage is imported by the tasks that encrypt, never at parse time.
        for index, value in enumerate(values):
            check_recipient(value, field=f"[{index}]")
        return values


class RestoreConfig(_Model):
    """The verification restore into a scratch database."""

    jobs: int = Field(2, ge=1, le=64)


class PoolsConfig(_Model):
    """Airflow pools that bound dumps per source server and restores per scratch server.

    Targets naming the same server share one pool (``core.pools`` derives its name); the
    server defaults to the connection id, since connections are resolved only when tasks run.
    ``pg-backup pools`` creates the pools with these sizes or checks them.
    """

    source_server: str | None = Field(
        None, description="label of the source server (e.g. db1.example.org:5432)"
    )
    scratch_server: str | None = Field(None, description="label of the scratch server")
    source_slots: int = Field(1, ge=1, le=1024, description="dumps at once on the source server")
    scratch_slots: int = Field(
        2, ge=1, le=1024, description="verification restores at once on the scratch server"
    )


class VerifyConfig(_Model):
    """What the verification proves beyond exact counts and the object inventory."""

    content: Literal["all", "off"] | list[str] = Field(
        "all",
        description="content fingerprints: all tables, off, or a list of schema.table names",
    )

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for index, name in enumerate(value):
                schema, dot, table = str(name).partition(".")
                if not (schema and dot and table):
                    raise ValueError(
                        f"[{index}] {name!r} is not schema.table: write it like public.Vote"
                    )
        return value


class AlertsConfig(_Model):
    """Who gets mail, and through which SMTP connection."""

    emails: list[str] = Field(default_factory=list)
    smtp_conn_id: ConnId = "smtp_default"
    from_email: str | None = None
    on_retry: bool = False
    base_url: str | None = None

    @field_validator("emails")
    @classmethod
    def _emails(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
                raise ValueError(f"{value!r} is not an email address")
        return values


class Timeouts(_Model):
    """execution_timeout per stage (field names are the ``Stage`` names) and for teardowns."""

    preflight: Duration = timedelta(minutes=10)
    dump: Duration = timedelta(hours=6)
    compress: Duration = timedelta(hours=3)
    encrypt: Duration = timedelta(hours=3)
    upload: Duration = timedelta(hours=6)
    restore: Duration = timedelta(hours=6)
    verify: Duration = timedelta(hours=2)
    teardown: Duration = timedelta(minutes=30)


class Budgets(_Model):
    """Time a stage is expected to take; over it, one email (the stage keeps running)."""

    def of(self, stage: Stage) -> timedelta:
        """The budget of one stage."""
        return getattr(self, stage.value)  # type: ignore[no-any-return]

    preflight: Duration = timedelta(minutes=2)
    dump: Duration = timedelta(minutes=30)
    compress: Duration = timedelta(minutes=15)
    encrypt: Duration = timedelta(minutes=15)
    upload: Duration = timedelta(minutes=30)
    restore: Duration = timedelta(minutes=45)
    verify: Duration = timedelta(minutes=15)


class RetentionConfig(_Model):
    """The daily retention sweep: grandfather-father-son over verified sets, with rails."""

    schedule: Cron = "30 4 * * *"
    daily: int = Field(7, ge=0, le=3650)
    weekly: int = Field(4, ge=0, le=520)
    monthly: int = Field(12, ge=0, le=1200)
    grace_days: int = Field(3, ge=0, le=3650, description="keep failed/incomplete sets this long")
    min_verified: int = Field(3, ge=1, le=1000)
    max_delete_fraction: float = Field(0.5, gt=0, le=1)
    timezone: str = "UTC"
    freshness: Duration = timedelta(hours=26)
    staging_keep_days: int = Field(3, ge=1, le=365)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone: use a name like UTC or Europe/Berlin") from None
        return value


class DestinationConfig(StorageConfig):
    """One of a target's destinations (3-2-1): where a copy of every set goes, and its retention.

    ``retention`` left out means the target's own ``retention``; keys given here override it
    key by key (``parse_config`` merges them).
    """

    name: str = Field(description="names its upload task (upload_<name>) and `--from NAME`")
    retention: RetentionConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not DESTINATION_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a destination name: use 1-24 characters of a-z, 0-9 and _, "
                "starting with a letter (it becomes the task id upload_<name>)"
            )
        return value


class CheckConfig(_Model):
    """An invariant the restored database must satisfy: SQL returning true, or no rows."""

    name: str = Field(min_length=1)
    sql: str = Field(min_length=1)


class DrillConfig(_Model):
    """The weekly restore drill."""

    schedule: Cron = "0 4 * * 0"
    rto: Duration = Field(timedelta(minutes=30), description="recovery-time objective")
    checks: list[CheckConfig] = Field(default_factory=list)
    # The server a worst-day restore would use. Drills then restore there instead of on the
    # scratch server, creating the roles it lacks (never altering one it has), with owners and
    # grants, and prove the database is as it was.
    standby_conn_id: ConnId | None = Field(
        None, description="postgres connection to the standby server drills restore onto"
    )
    # Targets with several destinations: "rotate" restores from one destination per drill, in
    # turn (week by week); "all" also fetches every other destination's copy and checks its
    # hash (the same bytes as the copy restored and proven).
    destinations: Literal["rotate", "all"] = "rotate"


class EmergencyConfig(_Model):
    """Defaults of the manual emergency DAG's trigger form."""

    keep_days: int = Field(90, ge=KEEP_DAYS_MIN, le=KEEP_DAYS_MAX)


class TargetConfig(_Model):
    """One database to back up, with every default already merged in."""

    name: str
    source_conn_id: ConnId
    scratch_conn_id: ConnId
    # Either one ``storage:`` block (one destination, named ``default``) or ``destinations:``.
    # After validation both are set: ``storage`` is the first destination.
    storage: StorageConfig = Field(None, validate_default=False)  # type: ignore[assignment]
    destinations: list[DestinationConfig] = Field(default_factory=list)
    encryption: EncryptionConfig
    schedule: Cron = "0 2 * * *"
    owner: str = "dba"
    tags: list[str] = Field(default_factory=list)
    staging_dir: str = "/tmp/pg_backup-staging"
    # Stages hand files over in an object store when set (workers that share no disk); each
    # worker then uses staging_dir for its own local work files only.
    staging_url: str | None = Field(
        None, description="s3://bucket/prefix for staging through the storage's connection"
    )
    staging_aws_conn_id: ConnId | None = Field(
        None,
        description="aws connection for staging_url (default: the first destination's aws_conn_id)",
    )
    staging_headroom: float = Field(
        1.2, ge=1.0, le=10.0, description="free-space margin over the estimated need"
    )
    dump: DumpConfig = DumpConfig()
    compress: CompressConfig = CompressConfig()
    restore: RestoreConfig = RestoreConfig()
    pools: PoolsConfig = PoolsConfig()
    verify: VerifyConfig = VerifyConfig()
    alerts: AlertsConfig = AlertsConfig()
    timeouts: Timeouts = Timeouts()
    budgets: Budgets = Budgets()
    sla: Duration = Field(
        timedelta(hours=2), description="time from queueing to a verified backup before mail"
    )
    emergency: EmergencyConfig = EmergencyConfig()
    retention: RetentionConfig = RetentionConfig()
    drill: DrillConfig = DrillConfig()
    retries: int = Field(2, ge=2, le=20, description="retries per task (2 or more)")
    retry_delay: Duration = timedelta(minutes=1)
    max_retry_delay: Duration = timedelta(minutes=30)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The name ends up in DAG ids, object keys and a scratch database name (63 bytes max).
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,23}", value):
            raise ValueError(
                "target names are 1-24 characters of a-z, 0-9 and _, starting with a letter"
            )
        return value

    @field_validator("staging_dir")
    @classmethod
    def _staging(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("staging_dir must be an absolute path")
        return value

    @field_validator("staging_url")
    @classmethod
    def _staging_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("s3://"):
            raise ValueError(
                "must be an s3://bucket/prefix URL (the staging objects go through "
                "storage.aws_conn_id); for a directory every worker shares, use staging_dir"
            )
        return StorageConfig._url(value)  # type: ignore[operator]

    @model_validator(mode="after")
    def _budgets_below_timeouts(self) -> TargetConfig:
        for stage in Stage:
            budget, timeout = self.budgets.of(stage), getattr(self.timeouts, stage.value)
            if budget >= timeout:
                raise ValueError(
                    f"budgets.{stage} ({budget}) must be shorter than timeouts.{stage} "
                    f"({timeout}): the budget warns by mail, the timeout kills the stage"
                )
        return self

    @model_validator(mode="after")
    def _one_storage_form(self) -> TargetConfig:
        given = self.model_fields_set
        if "storage" in given and "destinations" in given:
            raise ValueError(
                "storage and destinations are both set: keep one. storage: is one destination; "
                "for several, move its settings into an entry of destinations: (with a name:)"
            )
        if "destinations" in given:
            if not self.destinations:
                raise ValueError(
                    "destinations is empty: add at least one, like "
                    "[{name: nas, url: 'file:///srv/pg_backup'}]"
                )
            seen: set[str] = set()
            for index, dest in enumerate(self.destinations):
                if dest.name in seen:
                    raise ValueError(
                        f"destinations[{index}].name {dest.name!r} is used twice: give every "
                        "destination its own name"
                    )
                seen.add(dest.name)
            # Frozen model: fill the derived field once, here.
            object.__setattr__(self, "storage", self.destinations[0])
        elif self.storage is None:
            raise ValueError(
                "storage is missing: add storage: {url: ...} (one destination) or "
                "destinations: [...] (several; see dags/pg_backup.example.yaml)"
            )
        else:
            only = DestinationConfig(name=DEFAULT_DESTINATION, **self.storage.model_dump())
            object.__setattr__(self, "destinations", [only])
        return self

    @property
    def multi_destination(self) -> bool:
        """True when the target names its destinations (``destinations:``), even just one."""
        return len(self.destinations) > 1 or self.destinations[0].name != DEFAULT_DESTINATION

    def destination(self, name: str) -> DestinationConfig:
        """One destination by name.

        :raises ConfigError: no such destination (the message lists those there are)
        """
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations)
        raise ConfigError(f"target {self.name!r} has no destination {name!r}: use one of {known}")

    def for_destination(self, name: str) -> TargetConfig:
        """The target as if ``name`` were its only storage, with that destination's retention.

        Every stage written for one storage (upload, sweep, drill, restore) runs per
        destination through it.
        """
        dest = self.destination(name)
        return self.model_copy(
            update={
                "storage": dest,
                "destinations": [dest],
                "retention": dest.retention or self.retention,
                # The run's staging stays where it is, whichever destination a task serves.
                "staging_aws_conn_id": self.staging_connection,
            }
        )

    @property
    def staging_connection(self) -> str:
        """The aws connection ``staging_url`` is reached through."""
        return self.staging_aws_conn_id or self.storage.aws_conn_id

    @model_validator(mode="after")
    def _distinct_conns(self) -> TargetConfig:
        if self.scratch_conn_id == self.source_conn_id:
            raise ValueError(
                f"scratch_conn_id equals source_conn_id ({self.source_conn_id!r}): verification "
                "restores need a connection of their own (a scratch server or at least another "
                "database)"
            )
        return self


class Config(_Model):
    """The whole file, defaults merged into every target."""

    path: str
    targets: dict[str, TargetConfig]

    def target(self, name: str) -> TargetConfig:
        """Return one target or raise naming the targets that exist."""
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"{self.path}: no target {name!r} (targets: {known})") from None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _shown(value: Any) -> str:
    """The bad value for a message: never a private key, never a whole section."""
    if isinstance(value, (dict, list)):
        return ""
    text = repr(value)
    if "AGE-SECRET-KEY-" in text.upper():
        return " (got a private key: not shown)"
    if redact(text) != text:
        return " (got a value that looks like a secret: not shown)"
    return f" (got {text if len(text) <= 80 else text[:70] + '...'})"


def _describe(error: dict[str, Any], prefix: str) -> str:
    loc = ".".join(str(part) for part in error["loc"] if part != "name")
    field = f"{prefix}.{loc}" if loc else prefix
    if error["type"] == "extra_forbidden":
        return (
            # No value: an unknown key is often a pasted password, and this message is shown in
            # the UI and written to logs.
            f"{field}: unknown field; remove it or check its spelling. "
            "The file holds connection ids and settings, never passwords or keys"
        )
    if error["type"] == "missing":
        return f"{field}: required field is missing; add it (see dags/pg_backup.example.yaml)"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith("["):  # a list item named by the validator, e.g. recipients[0]
        return f"{field}{message}"
    if "(not shown)" in message:
        return f"{field}: {message}"
    return f"{field}: {message}{_shown(error['input'])}"


def _origin(loc: Any, override: dict[str, Any], defaults: dict[str, Any], name: str) -> str:
    """``defaults`` when the bad value came from there, else ``targets.<name>``."""

    def has(doc: Any, keys: list[Any]) -> bool:
        for key in keys:
            if not isinstance(doc, dict) or key not in doc:
                return False
            doc = doc[key]
        return True

    keys = [part for part in loc if isinstance(part, str)]
    if keys and not has(override, keys) and has(defaults, keys):
        return "defaults"
    return f"targets.{name}"


def parse_config(raw: Any, path: str = "<config>") -> Config:
    """Validate an already-parsed YAML document and merge defaults into each target."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the file must be a mapping with 'defaults:' and 'targets:'")
    unknown = set(raw) - {"defaults", "targets"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {sorted(unknown)}: only 'defaults' and 'targets' "
            "are allowed"
        )
    defaults = raw.get("defaults") or {}
    targets = raw.get("targets")
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: defaults must be a mapping")
    if not isinstance(targets, dict) or not targets:
        raise ConfigError(
            f"{path}: targets: add at least one target, like 'targets: {{voting: "
            "{source_conn_id: voting_db}}'"
        )
    resolved: dict[str, TargetConfig] = {}
    problems: list[str] = []
    for name, override in targets.items():
        if override is None:
            override = {}
        if not isinstance(override, dict):
            problems.append(f"targets.{name}: must be a mapping of settings")
            continue
        data = _merge(defaults, override)
        _one_storage_form(data, override)
        data["name"] = str(name)
        try:
            resolved[str(name)] = TargetConfig.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                if tuple(error["loc"]) == ("name",):
                    message = str(error["msg"]).removeprefix("Value error, ")
                    problems.append(f"targets.{name}: {message}")
                else:
                    where = _origin(error["loc"], override, defaults, str(name))
                    problem = _describe(dict(error), where)
                    if problem not in problems:  # a bad default is reported once, not per target
                        problems.append(problem)
    problems += _dag_id_clashes(list(resolved))
    if problems:
        raise ConfigError(f"invalid pg_backup config {path}:\n  " + "\n  ".join(problems))
    return Config(path=path, targets=resolved)


def _one_storage_form(data: dict[str, Any], override: dict[str, Any]) -> None:
    """A target's own storage form wins over the other form in defaults; merge retentions.

    A destination's ``retention`` overrides the target's key by key, so ``{daily: 14}`` keeps
    the target's weekly, monthly and rails.
    """
    if "destinations" in override and "storage" not in override:
        data.pop("storage", None)
    if "storage" in override and "destinations" not in override:
        data.pop("destinations", None)
    dests = data.get("destinations")
    raw = data.get("retention")
    base: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if isinstance(dests, list):
        data["destinations"] = [
            {**dest, "retention": _merge(base, dest["retention"])}
            if isinstance(dest, dict) and isinstance(dest.get("retention"), dict)
            else dest
            for dest in dests
        ]


def _dag_id_clashes(names: list[str]) -> list[str]:
    """Targets whose DAG ids collide (``x``'s emergency DAG is ``emergency_x``'s daily one)."""
    owner: dict[str, str] = {}
    problems = []
    for name in names:
        for dag_id in dag_ids(name):
            other = owner.setdefault(dag_id, name)
            if other != name:
                problems.append(
                    f"targets.{name}: its DAG {dag_id} is also a DAG of target {other!r}; "
                    "rename one of the two targets"
                )
    return problems


def config_path() -> Path:
    """The file named by ``$PG_BACKUP_CONFIG``, else ``dags/pg_backup.yaml``."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the config file (a local file read: allowed at DAG parse time)."""
    import yaml

    file = Path(path) if path is not None else config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"pg_backup config {file} does not exist: copy dags/pg_backup.example.yaml there "
            f"or point ${CONFIG_ENV} at your file"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pg_backup config {file} is not valid YAML: {exc}") from None
    return parse_config(raw, str(file))
