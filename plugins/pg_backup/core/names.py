"""Identifiers named once: literal types, stages, task ids and DAG ids.

Task ids are the stage names, and budgets and timeouts in the config are keyed by the same
names, so renaming a stage here renames its task, its budget mail and its timeout together.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Literal, get_args

Kind = Literal["scheduled", "emergency"]
KINDS: tuple[Kind, ...] = get_args(Kind)

# "custom": one pg_dump -Fc file; "directory": pg_dump -Fd --jobs, packed as one tar.
DumpFormat = Literal["custom", "directory"]

# What a backup set in storage is: proven, disproven, never checked, or not whole.
Status = Literal["verified", "failed", "unverified", "incomplete"]
STATUSES: tuple[Status, ...] = get_args(Status)


# The Airflow connection whose password is the metrics endpoint's scrape token (optional).
METRICS_TOKEN_CONN_ID = "pg_backup_metrics"


class Stage(StrEnum):
    """The timed stages of a backup run: each is a task with a budget and a timeout."""

    PREFLIGHT = "preflight"
    DUMP = "dump"
    COMPRESS = "compress"
    ENCRYPT = "encrypt"
    UPLOAD = "upload"
    RESTORE = "restore"
    VERIFY = "verify"


# The one destination a plain ``storage:`` block makes; its upload task keeps the id ``upload``.
DEFAULT_DESTINATION = "default"


def upload_task_id(destination: str, multi: bool) -> str:
    """``upload`` for a target with one storage, ``upload_<destination>`` with several."""
    return f"{Stage.UPLOAD.value}_{destination}" if multi else Stage.UPLOAD.value


# A backup DAG task of targets with several destinations only: fails the run, naming them,
# when a destination does not hold the set.
CHECK_DESTINATIONS = "check_destinations"


def stage_of_task(task_id: str) -> Stage | None:
    """The stage a backup DAG task runs (``upload_<destination>`` is an upload), else None."""
    if task_id in {s.value for s in Stage}:
        return Stage(task_id)
    if task_id.startswith(f"{Stage.UPLOAD.value}_"):
        return Stage.UPLOAD
    return None


class BackupTask(StrEnum):
    """The backup DAG's tasks besides its stages: the scratch database, the record, teardowns."""

    CREATE_SCRATCH_DB = "create_scratch_db"
    # Stores verification.json once both the upload and the verification restore succeeded.
    MARK_VERIFIED = "mark_verified"
    DROP_SCRATCH_DB = "drop_scratch_db"
    CLEANUP_STAGING = "cleanup_staging"


class DrillTask(StrEnum):
    """Tasks of the restore drill DAG, in the order they run."""

    CHOOSE = "choose"
    FETCH = "fetch"
    DECRYPT = "decrypt"
    DECOMPRESS = "decompress"
    CREATE_DRILL_DBS = "create_drill_dbs"
    RESTORE = "restore"
    VERIFY = "verify"
    REPORT = "report"
    DROP_DRILL_DBS = "drop_drill_dbs"
    CLEANUP = "cleanup"


# The drill's timed phases: the recovery time it reports is their sum.
DRILL_PHASES: tuple[DrillTask, ...] = (
    DrillTask.FETCH,
    DrillTask.DECRYPT,
    DrillTask.DECOMPRESS,
    DrillTask.RESTORE,
    DrillTask.VERIFY,
)


class SweepTask(StrEnum):
    """Tasks of the retention sweep DAG."""

    INVENTORY = "inventory"
    PLAN = "plan"
    DELETE = "delete"
    HOUSEKEEPING = "housekeeping"
    CHECK_FRESHNESS = "check_freshness"
    REPORT = "report"


def backup_dag_id(target: str, kind: Kind = "scheduled") -> str:
    """``pg_backup_<target>`` or ``pg_backup_emergency_<target>``."""
    return f"pg_backup_emergency_{target}" if kind == "emergency" else f"pg_backup_{target}"


def drill_dag_id(target: str) -> str:
    """``pg_restore_drill_<target>``."""
    return f"pg_restore_drill_{target}"


def sweep_dag_id(target: str) -> str:
    """``pg_retention_sweep_<target>``."""
    return f"pg_retention_sweep_{target}"


def dag_ids(target: str) -> list[str]:
    """Every DAG id of one target."""
    return [*(backup_dag_id(target, k) for k in KINDS), drill_dag_id(target), sweep_dag_id(target)]


def backup_dag_targets(targets: Iterable[str]) -> dict[str, str]:
    """Backup DAG id -> target, for every kind of every target (no parsing of ids needed)."""
    return {backup_dag_id(t, kind): t for t in targets for kind in KINDS}
