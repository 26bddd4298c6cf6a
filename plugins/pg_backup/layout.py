"""Backup ids, object keys and staging paths: pure functions of the DAG run, never of now()."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Kind = Literal["scheduled", "emergency"]

DATA_OBJECT = "db.dump.zst.age"
TABLES_OBJECT = "tables.json.age"
MANIFEST_OBJECT = "manifest.json"
VERIFICATION_OBJECT = "verification.json"

DUMP_FILE = "db.dump"
COMPRESSED_FILE = "db.dump.zst"
ENCRYPTED_FILE = DATA_OBJECT
TABLES_FILE = "tables.json"
ENCRYPTED_TABLES_FILE = TABLES_OBJECT

_ID = re.compile(
    r"^(?P<target>[a-z][a-z0-9_]*)_(?P<ts>\d{8}T\d{6}Z)_(?P<kind>scheduled|emergency)$"
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
        raise ValueError(
            f"{value!r} is not a backup id: expected "
            "<target>_<YYYYMMDDTHHMMSSZ>_<scheduled|emergency>"
        )
    taken_at = datetime.strptime(match["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return match["target"], taken_at, match["kind"]  # type: ignore[return-value]


def set_prefix(target: str, backup: str) -> str:
    """Key prefix of one backup set below the storage URL: ``<target>/YYYY/MM/DD/<id>/``."""
    _, taken_at, _ = parse_backup_id(backup)
    return f"{target}/{taken_at:%Y/%m/%d}/{backup}/"


def scratch_db_name(backup: str) -> str:
    """The verification database of one backup (63 bytes at most, lower case)."""
    name = f"pgb_verify_{backup.lower()}"
    if len(name) > 63:
        raise ValueError(f"scratch database name {name!r} is longer than 63 bytes")
    return name


def drill_db_name(backup: str) -> str:
    """The drill's restore database of one backup (63 bytes at most, lower case)."""
    name = f"pgb_drill_{backup.lower()}"
    if len(name) > 63:
        raise ValueError(f"drill database name {name!r} is longer than 63 bytes")
    return name


def drill_report_key(target: str, when: datetime, run_id: str) -> str:
    """Where a drill report is stored: ``<target>/drills/<date>-<run>.json``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return f"{target}/drills/{when:%Y-%m-%d}-{safe}.json"


@dataclass(frozen=True)
class RunInfo:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def run_info(target: str, kind: Kind, staging_dir: str, context: Any) -> RunInfo:
    """Derive the run's backup id from the DAG run (its ``run_after``), never from now()."""
    dag_run = context["dag_run"]
    when = dag_run.run_after or dag_run.logical_date
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    backup = backup_id(target, when, kind)
    return RunInfo(
        target=target,
        kind=kind,
        backup_id=backup,
        taken_at=when.astimezone(UTC).isoformat(),
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        staging=str(Path(staging_dir) / target / backup),
    )
