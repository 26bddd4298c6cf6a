"""Backup histories written straight into storage, shaped exactly like the pipeline's sets.

Running the real backup DAG once per simulated day would take minutes; the sweep only reads
keys, manifest.json and verification.json, so those are written as valid documents (the data
objects are a few random bytes whose size and sha256 the manifest records truthfully).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pg_backup.core import layout
from pg_backup.core.manifest import Emergency, Manifest, ObjectEntry, Verification
from pg_backup.core.retention import BackupSet


def _recipient() -> str:
    """A real age X25519 public key (nothing is encrypted to it: the data are random bytes)."""
    from pyrage import x25519

    return str(x25519.Identity.generate().to_public())


RECIPIENT = _recipient()

Put = Callable[[str, bytes], object]


@dataclass
class FakeSet:
    """One set as written: its identity, its keys, and the planner's view of it."""

    backup_id: str
    prefix: str
    taken_at: datetime
    kind: str
    status: str
    keep_days: int | None
    keys: list[str] = field(default_factory=list)

    def backup_set(self) -> BackupSet:
        """What the planner is given for this set (built from what was written, not listed)."""
        return BackupSet(
            self.backup_id,
            self.taken_at,
            self.kind,
            self.status,  # type: ignore[arg-type]
            self.keep_days,
        )


def write_set(
    put: Put,
    target: str,
    taken_at: datetime,
    *,
    kind: str = "scheduled",
    status: str = "verified",
    keep_days: int | None = None,
) -> FakeSet:
    """Write one set in the pipeline's order (data, tables, manifest, verification).

    status: verified / failed (both with verification.json), unverified (no verification:
    an emergency run with verify=false), incomplete (data only: the upload died before the
    manifest).
    """
    backup = layout.backup_id(target, taken_at, kind)  # type: ignore[arg-type]
    prefix = layout.set_prefix(target, backup)
    fake = FakeSet(backup, prefix, taken_at, kind, status, keep_days)

    def store(name: str, data: bytes) -> ObjectEntry:
        put(prefix + name, data)
        fake.keys.append(prefix + name)
        return ObjectEntry(
            key=prefix + name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
        )

    data = store(layout.DATA_OBJECT, os.urandom(64 + taken_at.day))
    if status == "incomplete":
        return fake
    tables = store(layout.TABLES_OBJECT, os.urandom(48))
    stamp = taken_at.isoformat()
    manifest = Manifest(
        backup_id=backup,
        target=target,
        kind=kind,  # type: ignore[arg-type]
        dag_id=f"pg_backup_emergency_{target}" if kind == "emergency" else f"pg_backup_{target}",
        run_id=f"scheduled__{stamp}",
        taken_at=stamp,
        snapshot_at=(taken_at + timedelta(seconds=2)).isoformat(),
        server_version="16.4",
        pg_dump_version="16.4",
        package_version="0.1.0",
        compression="zstd-3",
        recipients=[RECIPIENT],
        dump_bytes=data.bytes * 3,
        data=data,
        tables=tables,
        emergency=Emergency(reason="before the migration", keep_days=keep_days)
        if kind == "emergency" and keep_days
        else None,
    )
    store(layout.MANIFEST_OBJECT, manifest.to_bytes())
    if status in ("verified", "failed"):
        verification = Verification(
            backup_id=backup,
            status=status,  # type: ignore[arg-type]
            checked_at=(taken_at + timedelta(minutes=5)).isoformat(),
            relations_checked=9,
            rows_checked=5513,
            mismatches=0 if status == "verified" else 2,
            warnings=0,
            restore_seconds=1.5,
            verify_seconds=0.2,
        )
        store(layout.VERIFICATION_OBJECT, verification.to_bytes())
    return fake


def daily_history(put: Put, target: str, newest: datetime, days: int) -> list[FakeSet]:
    """One verified scheduled set per day, ``newest`` and the ``days - 1`` days before it."""
    return [write_set(put, target, newest - timedelta(days=i)) for i in range(days)]


def write_drill_report(
    put: Put, target: str, at: datetime, passed: list[FakeSet], failed: list[FakeSet] = ()
) -> dict:
    """A drill report as the drill's report task builds and stores it (``build_report``).

    ``passed`` sets restored with exact counts; ``failed`` ones had a count differ.
    """
    import json

    from pg_backup.core.drill_report import DrilledBackup, build_report
    from pg_backup.core.names import DRILL_PHASES

    drilled = [
        DrilledBackup(
            backup_id=f.backup_id,
            kind=f.kind,
            taken_at=f.taken_at.isoformat(),
            stored_bytes=100,
            age_hours=round((at - f.taken_at).total_seconds() / 3600, 2),
            phases={p.value: 1.5 for p in DRILL_PHASES},
            relations=9,
            rows=5513,
            counts_ok=f in passed,
        )
        for f in [*passed, *failed]
    ]
    run_id = f"scheduled__{at.isoformat()}"
    doc = build_report(target, run_id, at, 1, 1800.0, drilled)
    put(layout.drill_report_key(target, at, run_id), json.dumps(doc).encode())
    return doc
