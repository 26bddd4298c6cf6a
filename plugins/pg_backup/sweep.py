"""The retention sweep's I/O: inventory of sets in storage, deletes, housekeeping, freshness.

The decision itself is the pure ``retention.plan_retention``; this module only reads what is
there and carries out a plan. Deletes go data first, manifest last, so a sweep that dies
half-way leaves sets that the next sweep recognises as incomplete and finishes.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pg_backup import layout
from pg_backup.config import TargetConfig
from pg_backup.manifest import Manifest, Verification
from pg_backup.retention import BackupSet, RetentionPolicy
from pg_backup.storage import Storage, StorageError

log = logging.getLogger(__name__)

_SET_KEY = re.compile(
    r"^(?P<target>[a-z][a-z0-9_]*)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<id>[^/]+)/(?P<name>[^/]+)$"
)
# Objects below the target that are not backup sets (reports, preflight marker).
_NOT_SETS = (".preflight", "drills/", "sweeps/")
# Delete order within a set: everything else first, the manifest last.
_DELETE_ORDER = (
    layout.DATA_OBJECT,
    layout.TABLES_OBJECT,
    layout.VERIFICATION_OBJECT,
    layout.MANIFEST_OBJECT,
)


class SweepRefused(RuntimeError):
    """The sweep will not delete anything: the listing looks wrong."""


class StaleBackup(RuntimeError):
    """The newest verified backup is older than the freshness limit."""


@dataclass(frozen=True)
class SetRecord:
    """One backup set as found in storage."""

    backup_id: str
    prefix: str
    taken_at: str
    kind: str
    status: str  # verified | failed | unverified | incomplete
    keep_days: int | None
    keys: list[str]
    bytes: int

    def to_backup_set(self) -> BackupSet:
        """The form the pure planner takes."""
        return BackupSet(
            backup_id=self.backup_id,
            taken_at=datetime.fromisoformat(self.taken_at),
            kind=self.kind,  # type: ignore[arg-type]
            status=self.status,  # type: ignore[arg-type]
            keep_days=self.keep_days,
        )


@dataclass(frozen=True)
class Inventory:
    """Every set of a target, plus what did not look like one."""

    sets: list[SetRecord]
    objects: int
    stray: list[str] = field(default_factory=list)

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> Inventory:
        """Rebuild from an XCom dict."""
        return cls(
            sets=[SetRecord(**s) for s in data["sets"]],
            objects=data["objects"],
            stray=list(data.get("stray", [])),
        )


def classify(
    backup_id: str, names: set[str], manifest: Manifest | None, verification: Verification | None
) -> str:
    """Verified / failed / unverified / incomplete, from which objects exist and what they say."""
    if manifest is None or layout.DATA_OBJECT not in names or layout.TABLES_OBJECT not in names:
        # No manifest (upload died), or a sweep died after deleting data: not a usable backup.
        return "incomplete"
    if verification is None:
        return "unverified"
    return "verified" if verification.status == "verified" else "failed"


def inventory(store: Storage, target: str) -> Inventory:
    """List every object under ``<target>/`` and group them into classified sets."""
    grouped: dict[str, dict[str, int]] = {}
    stray: list[str] = []
    count = 0
    for obj in store.list(f"{target}/"):
        relative = obj.key[len(target) + 1 :]
        if relative.startswith(_NOT_SETS):
            continue
        count += 1
        match = _SET_KEY.match(obj.key)
        if not match or match["target"] != target:
            stray.append(obj.key)
            continue
        grouped.setdefault(obj.key[: -len(match["name"])], {})[match["name"]] = obj.bytes
    records: list[SetRecord] = []
    for prefix, names in sorted(grouped.items()):
        backup = prefix.rstrip("/").rsplit("/", 1)[1]
        try:
            _, taken_at, kind = layout.parse_backup_id(backup)
        except ValueError:
            stray.extend(prefix + name for name in names)
            continue
        manifest = verification = None
        if layout.MANIFEST_OBJECT in names:
            try:
                manifest = Manifest.from_bytes(store.get_bytes(prefix + layout.MANIFEST_OBJECT))
            except (StorageError, ValueError) as exc:
                log.warning("inventory: unreadable manifest %s: %s", prefix, exc)
        if layout.VERIFICATION_OBJECT in names:
            try:
                verification = Verification.from_bytes(
                    store.get_bytes(prefix + layout.VERIFICATION_OBJECT)
                )
            except (StorageError, ValueError) as exc:
                log.warning("inventory: unreadable verification %s: %s", prefix, exc)
        keep_days = manifest.emergency.keep_days if manifest and manifest.emergency else None
        records.append(
            SetRecord(
                backup_id=backup,
                prefix=prefix,
                taken_at=taken_at.isoformat(),
                kind=kind,
                status=classify(backup, set(names), manifest, verification),
                keep_days=keep_days,
                keys=sorted(prefix + name for name in names),
                bytes=sum(names.values()),
            )
        )
    return Inventory(sets=records, objects=count, stray=sorted(stray))


def unfinished_deletes(found: Inventory) -> list[str]:
    """Sets an earlier sweep began deleting: the manifest is still there, the data is gone.

    Uploads write the data object first and the manifest last, so only a delete leaves this
    shape. The planner sees such a set as "incomplete" and would keep it for grace_days (meant
    for debugging a failed upload); a sweep must finish its own deletes instead.
    """
    return [
        s.backup_id
        for s in found.sets
        if s.prefix + layout.MANIFEST_OBJECT in s.keys
        and s.prefix + layout.DATA_OBJECT not in s.keys
    ]


def policy_of(cfg: TargetConfig) -> RetentionPolicy:
    """The planner's policy from the target's config."""
    r = cfg.retention
    return RetentionPolicy(
        daily=r.daily,
        weekly=r.weekly,
        monthly=r.monthly,
        emergency_keep_days=cfg.emergency.keep_days,
        grace_days=r.grace_days,
        min_verified=r.min_verified,
        max_delete_fraction=r.max_delete_fraction,
        timezone=r.timezone,
    )


def check_listing(found: Inventory) -> None:
    """Objects but not one manifest: a wrong prefix must not look like an empty one."""
    if found.objects and not any(s.status != "incomplete" for s in found.sets):
        raise SweepRefused(
            f"found {found.objects} object(s) under the target but no complete backup set "
            "(no manifest.json): is storage.url or the target name wrong? Nothing was deleted"
        )


@dataclass(frozen=True)
class DeleteResult:
    """What a delete pass did."""

    deleted_sets: list[str]
    deleted_objects: int
    locked: list[str]
    dry_run: bool

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)


def delete_sets(
    store: Storage, found: Inventory, delete_ids: list[str], dry_run: bool, now: datetime
) -> DeleteResult:
    """Delete the planned sets: data objects first, manifest last; locked sets are skipped."""
    by_id = {s.backup_id: s for s in found.sets}
    deleted: list[str] = []
    locked: list[str] = []
    objects = 0
    for backup_id in delete_ids:
        record = by_id[backup_id]
        until = max(
            (u for u in (store.locked_until(k) for k in record.keys) if u is not None), default=None
        )
        if until is not None and until > now:
            locked.append(f"{record.backup_id} (Object Lock until {until.isoformat()})")
            log.info("sweep: %s is under Object Lock until %s: kept", record.backup_id, until)
            continue
        if dry_run:
            log.info(
                "sweep (dry run): would delete %s (%d objects)", record.backup_id, len(record.keys)
            )
            continue
        for key in delete_order(record):
            store.delete(key)
            objects += 1
        deleted.append(record.backup_id)
        log.info("sweep: deleted %s (%d objects)", record.backup_id, len(record.keys))
    return DeleteResult(
        deleted_sets=deleted, deleted_objects=objects, locked=locked, dry_run=dry_run
    )


def delete_order(record: SetRecord) -> list[str]:
    """Unknown objects, then data, tables, verification, and the manifest last."""
    rank = {name: i for i, name in enumerate(_DELETE_ORDER)}
    return sorted(record.keys, key=lambda k: rank.get(k[len(record.prefix) :], -1))


def clean_staging(staging_dir: str, target: str, keep_days: int, now: datetime) -> list[str]:
    """Remove run directories in staging untouched for more than ``keep_days``."""
    base = Path(staging_dir) / target
    if not base.is_dir():
        return []
    cutoff = now.timestamp() - keep_days * 86400
    removed = []
    for run_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        newest = max(
            (p.stat().st_mtime for p in run_dir.rglob("*")), default=run_dir.stat().st_mtime
        )
        if newest < cutoff:
            shutil.rmtree(run_dir)
            removed.append(run_dir.name)
    return removed


def newest_verified(found: Inventory) -> SetRecord | None:
    """The newest verified set, if any."""
    verified = [s for s in found.sets if s.status == "verified"]
    return max(verified, key=lambda s: (s.taken_at, s.backup_id), default=None)


def check_freshness(found: Inventory, now: datetime, limit: timedelta) -> str:
    """Raise StaleBackup when the newest verified set is older than ``limit``."""
    newest = newest_verified(found)
    if newest is None:
        raise StaleBackup("ever: there is no verified backup in storage")
    taken = datetime.fromisoformat(newest.taken_at)
    age = now - taken
    if age > limit:
        raise StaleBackup(f"{taken:%Y-%m-%d %H:%M UTC} (age {age}, limit {limit})")
    return f"newest verified backup {newest.backup_id} is {age} old (limit {limit})"


def report_key(target: str, when: datetime, run_id: str) -> str:
    """Where a sweep report goes: beside the drill reports."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return f"{target}/sweeps/{when:%Y-%m-%d}-{safe}.json"


def utcnow() -> datetime:
    """Wall clock, only for Object Lock dates and staging ages (never for the plan)."""
    return datetime.fromtimestamp(time.time(), UTC)
