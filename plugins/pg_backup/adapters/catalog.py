"""The catalog of backup sets in storage: what sets a target has, and what each one is.

One listing below ``<target>/``; objects are grouped by set folder, and each set is classified
from which of its objects exist and what its manifest and verification record say. Used by the
sweep, the drill and ``pg-backup list``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TypeVar

from pg_backup.adapters.storage import Storage
from pg_backup.core import layout
from pg_backup.core.errors import BackupIdError, StorageError
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.core.names import Kind, Status
from pg_backup.core.records import Record
from pg_backup.core.retention import BackupSet

log = logging.getLogger(__name__)

_Doc = TypeVar("_Doc", Manifest, Verification)

# Delete order within a set: everything else first, the manifest last.
_DELETE_ORDER = (
    layout.DATA_OBJECT,
    layout.TABLES_OBJECT,
    layout.GLOBALS_OBJECT,
    layout.VERIFICATION_OBJECT,
    layout.MANIFEST_OBJECT,
)


class SetRecord(Record):
    """One backup set as found in storage (``bytes``: all its objects together)."""

    backup_id: str
    prefix: str
    taken_at: str
    kind: Kind
    status: Status
    keep_days: int | None
    keys: list[str]
    bytes: int

    def to_backup_set(self) -> BackupSet:
        """The form the pure retention planner takes."""
        return BackupSet(
            backup_id=self.backup_id,
            taken_at=datetime.fromisoformat(self.taken_at),
            kind=self.kind,
            status=self.status,
            keep_days=self.keep_days,
        )

    def has(self, name: str) -> bool:
        """True if the set holds the object ``name`` (e.g. ``manifest.json``)."""
        return self.prefix + name in self.keys


class Inventory(Record):
    """Every set of a target, plus what did not look like one (``objects``: keys counted)."""

    sets: list[SetRecord]
    objects: int
    stray: list[str] = []


def classify(
    names: set[str], manifest: Manifest | None, verification: Verification | None
) -> Status:
    """Verified / failed / unverified / incomplete, from which objects exist and what they say."""
    if manifest is None or layout.DATA_OBJECT not in names or layout.TABLES_OBJECT not in names:
        # No manifest (upload died), or a sweep died after deleting data: not a usable backup.
        return "incomplete"
    if verification is None:
        return "unverified"
    return "verified" if verification.status == "verified" else "failed"


def _read(store: Storage, key: str, doc: type[_Doc]) -> _Doc | None:
    try:
        return doc.from_bytes(store.get_bytes(key))
    except (StorageError, ValueError) as exc:
        log.warning("catalog: unreadable %s: %s", key, exc)
        return None


def inventory(store: Storage, target: str) -> Inventory:
    """List every object under ``<target>/`` and group them into classified sets."""
    grouped: dict[str, dict[str, int]] = {}
    stray: list[str] = []
    count = 0
    for obj in store.list(f"{target}/"):
        if obj.key[len(target) + 1 :].startswith(layout.NOT_SETS):
            continue
        count += 1
        parts = layout.split_set_key(obj.key)
        if parts is None or parts[0] != target:
            stray.append(obj.key)
            continue
        grouped.setdefault(parts[1], {})[parts[2]] = obj.bytes
    records: list[SetRecord] = []
    for prefix, names in sorted(grouped.items()):
        backup = prefix.rstrip("/").rsplit("/", 1)[1]
        try:
            _, taken_at, kind = layout.parse_backup_id(backup)
        except BackupIdError:
            stray.extend(prefix + name for name in names)
            continue
        manifest: Manifest | None = None
        verification: Verification | None = None
        if layout.MANIFEST_OBJECT in names:
            manifest = _read(store, prefix + layout.MANIFEST_OBJECT, Manifest)
        if layout.VERIFICATION_OBJECT in names:
            verification = _read(store, prefix + layout.VERIFICATION_OBJECT, Verification)
        keep_days = manifest.emergency.keep_days if manifest and manifest.emergency else None
        records.append(
            SetRecord(
                backup_id=backup,
                prefix=prefix,
                taken_at=taken_at.isoformat(),
                kind=kind,
                status=classify(set(names), manifest, verification),
                keep_days=keep_days,
                keys=sorted(prefix + name for name in names),
                bytes=sum(names.values()),
            )
        )
    return Inventory(sets=records, objects=count, stray=sorted(stray))


def complete_sets(found: Inventory) -> list[dict[str, str]]:
    """Sets a restore can use (verified or unverified), as the drill's chooser takes them."""
    return [
        {"backup_id": s.backup_id, "taken_at": s.taken_at, "status": s.status}
        for s in found.sets
        if s.status in ("verified", "unverified")
    ]


def newest_verified(found: Inventory) -> SetRecord | None:
    """The newest verified set, if any."""
    verified = [s for s in found.sets if s.status == "verified"]
    return max(verified, key=lambda s: (s.taken_at, s.backup_id), default=None)


def unfinished_deletes(found: Inventory) -> list[str]:
    """Sets an earlier sweep began deleting: the manifest is still there, the data is gone.

    Uploads write the data object first and the manifest last, so only a delete leaves this
    shape. The planner sees such a set as "incomplete" and would keep it for grace_days (meant
    for debugging a failed upload); a sweep must finish its own deletes instead.
    """
    return [
        s.backup_id
        for s in found.sets
        if s.has(layout.MANIFEST_OBJECT) and not s.has(layout.DATA_OBJECT)
    ]


def delete_order(record: SetRecord) -> list[str]:
    """Unknown objects, then data, tables, verification, and the manifest last."""
    rank = {name: i for i, name in enumerate(_DELETE_ORDER)}
    return sorted(record.keys, key=lambda k: rank.get(k[len(record.prefix) :], -1))
