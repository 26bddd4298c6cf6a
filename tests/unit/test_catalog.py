"""Tests for the pure parts of pg_backup.adapters.catalog: classification and delete order."""

from __future__ import annotations

from pg_backup.adapters.catalog import (
    Inventory,
    SetRecord,
    classify,
    complete_sets,
    delete_order,
    newest_verified,
    unfinished_deletes,
)
from pg_backup.core import layout
from pg_backup.core.manifest import Verification

BACKUP = "voting_20261128T020000Z_scheduled"
PREFIX = layout.set_prefix("voting", BACKUP)
ALL = set(layout.SET_OBJECTS)


def verification(status: str) -> Verification:
    return Verification(
        backup_id=BACKUP,
        status=status,  # type: ignore[arg-type]
        checked_at="2026-11-28T02:10:00+00:00",
        relations_checked=1,
        rows_checked=1,
        mismatches=0,
        warnings=0,
        restore_seconds=1,
        verify_seconds=1,
    )


def record(names: set[str], status: str = "verified", day: int = 28) -> SetRecord:
    backup = f"voting_202611{day:02d}T020000Z_scheduled"
    prefix = layout.set_prefix("voting", backup)
    return SetRecord(
        backup_id=backup,
        prefix=prefix,
        taken_at=f"2026-11-{day:02d}T02:00:00+00:00",
        kind="scheduled",
        status=status,  # type: ignore[arg-type]
        keep_days=None,
        keys=sorted(prefix + n for n in names),
        bytes=1,
    )


def test_classify_from_objects_and_documents():
    """No manifest or no data: incomplete; no verification: unverified; else its status."""
    manifest = object()  # classify only asks whether there is one
    assert classify(ALL, None, None) == "incomplete"
    assert classify(ALL - {layout.DATA_OBJECT}, manifest, None) == "incomplete"  # type: ignore[arg-type]
    assert classify(ALL, manifest, None) == "unverified"  # type: ignore[arg-type]
    assert classify(ALL, manifest, verification("verified")) == "verified"  # type: ignore[arg-type]
    assert classify(ALL, manifest, verification("failed")) == "failed"  # type: ignore[arg-type]


def test_delete_order_is_known_objects_only_data_first_manifest_last():
    """Data, tables, verification, then the manifest; an object of another name is never deleted."""
    rec = record(ALL | {"extra.txt"})
    names = [k[len(rec.prefix) :] for k in delete_order(rec)]
    assert names == [
        layout.DATA_OBJECT,
        layout.GLOBALS_OBJECT,
        layout.TABLES_OBJECT,
        layout.VERIFICATION_OBJECT,
        layout.MANIFEST_OBJECT,
    ]


def test_unfinished_deletes_and_newest_verified():
    """A manifest without data is an unfinished delete; the newest verified set is found."""
    half = record({layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT}, "incomplete", day=20)
    found = Inventory(
        sets=[half, record(ALL, day=26), record(ALL, "failed", day=27), record(ALL, day=25)],
        objects=10,
    )
    assert unfinished_deletes(found) == [half.backup_id]
    newest = newest_verified(found)
    assert newest is not None and newest.taken_at.startswith("2026-11-26")
    assert [c["status"] for c in complete_sets(found)] == ["verified", "verified"]


def test_inventory_round_trips_through_xcom():
    """The catalog record travels as a JSON XCom and comes back equal."""
    found = Inventory(sets=[record(ALL)], objects=4, stray=["voting/x"])
    assert Inventory.from_xcom(found.to_xcom()) == found
