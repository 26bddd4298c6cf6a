"""The catalog of backup sets in storage: what sets a target has, and what each one is.

One listing below ``<target>/``; objects are grouped by set folder, and each set is classified
from which of its objects exist and what its manifest and verification record say. Used by the
sweep, the drill and ``pg-backup list``.

Beyond its status, each set is judged on two counts:

* **ownership** (``foreign``): a set is this deployment's own only when its manifest can be read,
  describes this very folder, and was encrypted to one of the deployment's keys
  (``encryption.recipients`` or ``encryption.retired_recipients``). The recipients have been in
  every manifest since the first release, so older sets are recognised by the same rule. A set
  without a readable manifest cannot be proven anyone's. Foreign sets are listed, never counted
  toward retention, never deleted.
* **damage** (``problems``): an object the manifest names is missing or has another size, the
  verification record is missing or unreadable, or the folder holds objects pg_backup did not
  write. Such a set is reported and kept for a human.

Only the known object names of a set (``layout.SET_OBJECTS``) belong to it; anything else in its
folder is a foreign object (``Inventory.stray``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import TypeVar

from pg_backup.adapters.storage import Storage
from pg_backup.core import layout
from pg_backup.core.errors import BackupIdError, StorageError
from pg_backup.core.manifest import Manifest, ObjectEntry, Verification
from pg_backup.core.names import Kind, Status
from pg_backup.core.records import Record
from pg_backup.core.retention import BackupSet

log = logging.getLogger(__name__)

_Doc = TypeVar("_Doc", Manifest, Verification)

NO_MANIFEST = (
    "no readable manifest.json: nothing proves pg_backup wrote it (an upload that died, or "
    "another writer); remove it by hand once you know"
)


class SetRecord(Record):
    """One backup set as found in storage.

    ``keys``: its objects of known names; ``bytes``: their sizes together; ``foreign``: why it
    cannot be proven this deployment's (None: it is ours); ``problems``: damage found (a set
    with problems is kept for a human).
    """

    backup_id: str
    prefix: str
    taken_at: str
    kind: Kind
    status: Status
    keep_days: int | None
    keys: list[str]
    bytes: int
    foreign: str | None = None
    problems: list[str] = []

    def to_backup_set(self) -> BackupSet:
        """The form the pure retention planner takes (damage holds the set)."""
        return BackupSet(
            backup_id=self.backup_id,
            taken_at=datetime.fromisoformat(self.taken_at),
            kind=self.kind,
            status=self.status,
            keep_days=self.keep_days,
            hold="; ".join(self.problems) or None,
        )

    def has(self, name: str) -> bool:
        """True if the set holds the object ``name`` (e.g. ``manifest.json``)."""
        return self.prefix + name in self.keys

    @property
    def sound(self) -> bool:
        """Ours and undamaged: a set the product may count on."""
        return self.foreign is None and not self.problems


class Inventory(Record):
    """Every set of a target, plus what did not look like one (``objects``: keys counted).

    ``stray``: keys below the target that are no object of a set (foreign objects).
    """

    sets: list[SetRecord]
    objects: int
    stray: list[str] = []

    def ours(self) -> list[SetRecord]:
        """The sets proven this deployment's."""
        return [s for s in self.sets if s.foreign is None]

    def foreign_sets(self) -> list[SetRecord]:
        """The sets that cannot be proven this deployment's."""
        return [s for s in self.sets if s.foreign is not None]


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


def _read(store: Storage, key: str, doc: type[_Doc]) -> tuple[_Doc | None, str]:
    """The document, or None and why it could not be read."""
    try:
        return doc.from_bytes(store.get_bytes(key)), ""
    except (StorageError, ValueError) as exc:
        log.warning("catalog: unreadable %s: %s", key, exc)
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def ownership(
    manifest: Manifest, target: str, backup_id: str, keys: Collection[str] | None
) -> str | None:
    """Why a set with this readable manifest is not this deployment's, or None when it is.

    :param keys: the deployment's public keys, current and retired (None: not judged)
    """
    if manifest.target != target or manifest.backup_id != backup_id:
        return f"its manifest describes {manifest.target}/{manifest.backup_id}, not this folder"
    if keys is not None and not set(manifest.recipients) & set(keys):
        return (
            "encrypted to keys this deployment does not have (not in encryption.recipients or "
            "encryption.retired_recipients): another deployment's set, or a key removed "
            "without being retired"
        )
    return None


def damage(
    names: dict[str, int],
    manifest: Manifest,
    verification: Verification | None,
    unreadable_verification: str,
    strangers: list[str],
) -> list[str]:
    """What is wrong with a set of ours whose data object is still there (empty: nothing).

    :param names: object name -> stored size, of the set's known objects
    :param strangers: names in the set's folder that pg_backup does not write
    """
    problems = []
    entries = [v for v in (getattr(manifest, f) for f in type(manifest).model_fields) if v]
    for entry in (e for e in entries if isinstance(e, ObjectEntry)):
        name = entry.key.rsplit("/", 1)[-1]
        if name not in names:
            problems.append(f"{name} is missing")
        elif names[name] != entry.bytes:
            problems.append(
                f"stored {name} is {names[name]} bytes, the manifest says {entry.bytes}"
            )
    if unreadable_verification:
        problems.append(f"{layout.VERIFICATION_OBJECT} cannot be read: {unreadable_verification}")
    elif verification is None and manifest.kind == "scheduled":
        problems.append(
            f"never verified: {layout.VERIFICATION_OBJECT} is missing (the verification restore "
            "failed, or the file was removed)"
        )
    if strangers:
        problems.append(
            f"its folder holds {len(strangers)} object(s) pg_backup did not write "
            f"({', '.join(sorted(strangers)[:3])}{', ...' if len(strangers) > 3 else ''})"
        )
    return problems


def inventory(store: Storage, target: str, keys: Collection[str] | None = None) -> Inventory:
    """List every object under ``<target>/`` and group them into classified sets.

    :param keys: the deployment's public keys (current and retired): sets encrypted to none of
        them are foreign. None: ownership is judged from the manifest's own consistency only.
    """
    grouped: dict[str, dict[str, int]] = {}
    strangers: dict[str, list[str]] = {}
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
        _, prefix, name = parts
        if name in layout.SET_OBJECTS:
            grouped.setdefault(prefix, {})[name] = obj.bytes
        else:
            strangers.setdefault(prefix, []).append(name)
            stray.append(obj.key)
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
        unreadable_manifest = unreadable_verification = ""
        if layout.MANIFEST_OBJECT in names:
            manifest, unreadable_manifest = _read(store, prefix + layout.MANIFEST_OBJECT, Manifest)
        if layout.VERIFICATION_OBJECT in names:
            verification, unreadable_verification = _read(
                store, prefix + layout.VERIFICATION_OBJECT, Verification
            )
        foreign: str | None = None
        problems: list[str] = []
        if manifest is None:
            foreign = (
                f"manifest.json cannot be read ({unreadable_manifest}): nothing proves "
                "pg_backup wrote it"
                if unreadable_manifest
                else NO_MANIFEST
            )
        else:
            foreign = ownership(manifest, target, backup, keys)
            if foreign is None and layout.DATA_OBJECT in names:
                problems = damage(
                    names,
                    manifest,
                    verification,
                    unreadable_verification,
                    strangers.get(prefix, []),
                )
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
                foreign=foreign,
                problems=problems,
            )
        )
    return Inventory(sets=records, objects=count, stray=sorted(stray))


def complete_sets(found: Inventory) -> list[dict[str, str]]:
    """Our sets a restore can use (verified or unverified), as the drill's chooser takes them.

    A damaged set stays a candidate (a drill proves the damage) under the status "damaged",
    so it is never the "newest verified" pick.
    """
    return [
        {
            "backup_id": s.backup_id,
            "taken_at": s.taken_at,
            "status": s.status if not s.problems else "damaged",
        }
        for s in found.ours()
        if s.status in ("verified", "unverified")
    ]


def newest_verified(found: Inventory) -> SetRecord | None:
    """The newest verified set of ours without damage, if any."""
    verified = [s for s in found.sets if s.status == "verified" and s.sound]
    return max(verified, key=lambda s: (s.taken_at, s.backup_id), default=None)


def unfinished_deletes(found: Inventory) -> list[str]:
    """Sets an earlier sweep began deleting: the manifest is still there, the data is gone.

    Uploads write the data object first and the manifest last, so only a delete leaves this
    shape. The planner sees such a set as "incomplete" and would keep it for grace_days (meant
    for debugging a failed upload); a sweep must finish its own deletes instead.
    """
    return [
        s.backup_id
        for s in found.ours()
        if s.has(layout.MANIFEST_OBJECT) and not s.has(layout.DATA_OBJECT)
    ]


def delete_order(record: SetRecord) -> list[str]:
    """The set's objects of known names only: data first, the manifest last.

    Anything else in the folder is not the product's to delete.
    """
    rank = {layout.DATA_OBJECT: 0, layout.MANIFEST_OBJECT: 2}
    own = [k for k in record.keys if k[len(record.prefix) :] in layout.SET_OBJECTS]
    return sorted(own, key=lambda k: (rank.get(k[len(record.prefix) :], 1), k))
