"""Backup ids, object keys, staging paths and database names: pure functions, never of now().

One backup set in storage, below the storage URL::

    <target>/YYYY/MM/DD/<backup id>/{db.dump.zst.age, tables.json.age, globals.sql.age,
                                     manifest.json, verification.json}

Beside the sets: ``<target>/drills/`` and ``<target>/sweeps/`` (reports),
``<target>/.preflight`` (the marker preflight writes to prove storage is writable) and
``<target>/catalog.json`` (the catalog index, ``core.catalog_index``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pg_backup.core.errors import BackupIdError
from pg_backup.core.names import Kind
from pg_backup.core.records import Record

# The objects of one set, in the order the upload writes them (the manifest last).
DATA_OBJECT = "db.dump.zst.age"
TABLES_OBJECT = "tables.json.age"
# The roles and database settings as a psql script (sets written before it have none).
GLOBALS_OBJECT = "globals.sql.age"
MANIFEST_OBJECT = "manifest.json"
VERIFICATION_OBJECT = "verification.json"
SET_OBJECTS = (DATA_OBJECT, TABLES_OBJECT, GLOBALS_OBJECT, MANIFEST_OBJECT, VERIFICATION_OBJECT)

# Staging files of one run.
DUMP_FILE = "db.dump"
# A parallel (directory-format) dump is written here, and packed into DUMP_FILE as a tar whose
# one directory has this name: the stock ``tar -x`` recreates it.
DUMP_DIR = "db.dump.d"
COMPRESSED_FILE = "db.dump.zst"
ENCRYPTED_FILE = DATA_OBJECT
TABLES_FILE = "tables.json"
ENCRYPTED_TABLES_FILE = TABLES_OBJECT
GLOBALS_FILE = "globals.sql"
ENCRYPTED_GLOBALS_FILE = GLOBALS_OBJECT

# Below ``<target>/`` but not backup sets.
PREFLIGHT_MARKER = ".preflight"
DRILLS_DIR = "drills"
SWEEPS_DIR = "sweeps"
CATALOG_OBJECT = "catalog.json"  # also covers its lock file, catalog.json.lock
NOT_SETS = (PREFLIGHT_MARKER, f"{DRILLS_DIR}/", f"{SWEEPS_DIR}/", CATALOG_OBJECT)

_ID = re.compile(
    r"^(?P<target>[a-z][a-z0-9_]*)_(?P<ts>\d{8}T\d{6}Z)_(?P<kind>scheduled|emergency)$"
)
_SET_KEY = re.compile(
    r"^(?P<target>[a-z][a-z0-9_]*)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<id>[^/]+)/"
    r"(?P<name>[^/]+)$"
)


def backup_id(target: str, taken_at: datetime, kind: Kind) -> str:
    """``<target>_<YYYYMMDDTHHMMSSZ>_<kind>``: the same run always gives the same id."""
    if taken_at.tzinfo is None:
        raise ValueError("taken_at must be timezone-aware")
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{target}_{stamp}_{kind}"


def parse_backup_id(value: str) -> tuple[str, datetime, Kind]:
    """Split a backup id into target, time and kind, or raise naming the expected form."""
    match = _ID.match(value)
    if not match:
        raise BackupIdError(
            f"{value!r} is not a backup id: expected "
            "<target>_<YYYYMMDDTHHMMSSZ>_<scheduled|emergency> (see `pg-backup list <target>`)"
        )
    taken_at = datetime.strptime(match["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return match["target"], taken_at, match["kind"]  # type: ignore[return-value]


def set_prefix(target: str, backup: str) -> str:
    """Key prefix of one backup set below the storage URL: ``<target>/YYYY/MM/DD/<id>/``."""
    _, taken_at, _ = parse_backup_id(backup)
    return f"{target}/{taken_at:%Y/%m/%d}/{backup}/"


def split_set_key(key: str) -> tuple[str, str, str] | None:
    """``(target, set prefix, object name)`` of a key inside a set's folder, else None."""
    match = _SET_KEY.match(key)
    if not match:
        return None
    return match["target"], key[: -len(match["name"])], match["name"]


def preflight_key(target: str) -> str:
    """The small object preflight overwrites to prove storage is writable."""
    return f"{target}/{PREFLIGHT_MARKER}"


def catalog_key(target: str) -> str:
    """The target's catalog index: ``<target>/catalog.json``."""
    return f"{target}/{CATALOG_OBJECT}"


def safe_run_id(run_id: str) -> str:
    """A run id as a file or key name (run ids hold ``:`` and ``+``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def drill_report_key(target: str, when: datetime, run_id: str) -> str:
    """Where a drill report is stored: ``<target>/drills/<date>-<run>.json``."""
    return f"{target}/{DRILLS_DIR}/{when:%Y-%m-%d}-{safe_run_id(run_id)}.json"


def sweep_report_key(target: str, when: datetime, run_id: str) -> str:
    """Where a sweep report is stored: ``<target>/sweeps/<date>-<run>.json``."""
    return f"{target}/{SWEEPS_DIR}/{when:%Y-%m-%d}-{safe_run_id(run_id)}.json"


def _db_name(prefix: str, backup: str) -> str:
    name = f"{prefix}{backup.lower()}"
    if len(name) > 63:
        raise ValueError(f"database name {name!r} is longer than 63 bytes (PostgreSQL's limit)")
    return name


def scratch_db_name(backup: str) -> str:
    """The verification database of one backup: ``pgb_verify_<backup id>``."""
    return _db_name("pgb_verify_", backup)


def drill_db_name(backup: str) -> str:
    """The drill's restore database of one backup: ``pgb_drill_<backup id>``."""
    return _db_name("pgb_drill_", backup)


def staging_run_dir(staging_dir: str, target: str, backup: str) -> Path:
    """A backup run's own staging directory."""
    return Path(staging_dir) / target / backup


def drill_workdir(staging_dir: str, target: str, run_id: str, backup: str | None = None) -> Path:
    """A drill run's download directory (one subdirectory per drilled backup)."""
    base = Path(staging_dir) / target / f"drill-{safe_run_id(run_id)}"
    return base / backup if backup else base


class RunInfo(Record):
    """What every stage needs to know about the backup its DAG run is making."""

    target: str
    kind: Kind
    backup_id: str
    taken_at: str
    dag_id: str
    run_id: str
    staging: str

    @property
    def staging_path(self) -> Path:
        """The run's own staging directory."""
        return Path(self.staging)

    @property
    def prefix(self) -> str:
        """The set's key prefix below the storage URL."""
        return set_prefix(self.target, self.backup_id)


def run_time(context: Any) -> datetime:
    """The DAG run's own time (``run_after``, else the logical date), timezone-aware."""
    dag_run = context["dag_run"]
    when: datetime = dag_run.run_after or dag_run.logical_date
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def run_info(target: str, kind: Kind, staging_dir: str, context: Any) -> RunInfo:
    """Derive the run's backup id from the DAG run (its ``run_after``), never from now()."""
    dag_run = context["dag_run"]
    when = run_time(context)
    backup = backup_id(target, when, kind)
    return RunInfo(
        target=target,
        kind=kind,
        backup_id=backup,
        taken_at=when.astimezone(UTC).isoformat(),
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        staging=str(staging_run_dir(staging_dir, target, backup)),
    )
