"""Tests for pg_backup.core.manifest: strict, stable plaintext documents with no data about the data."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from pg_backup.core.dbprops import DatabaseLocale
from pg_backup.core.manifest import Emergency, Manifest, ObjectEntry, SourceIdentity, Verification
from tests.unit.test_dbprops import ICU

PREFIX = "voting/2025/03/09/voting_20250309T020000Z_emergency/"
SHA = hashlib.sha256(b"data").hexdigest()

MANIFEST_KEYS = {
    "source",
    "format",
    "backup_id",
    "target",
    "kind",
    "dag_id",
    "run_id",
    "taken_at",
    "snapshot_at",
    "server_version",
    "pg_dump_version",
    "package_version",
    "dump_format",
    "compression",
    "encryption",
    "recipients",
    "dump_bytes",
    "data",
    "tables",
    "emergency",
    "database",
    "globals",
}
DATABASE_KEYS = {
    "encoding",
    "locale_provider",
    "collate",
    "ctype",
    "provider_locale",
    "icu_rules",
    "collation_version",
}
OBJECT_KEYS = {"key", "bytes", "sha256"}
EMERGENCY_KEYS = {"reason", "keep_days", "triggered_by"}
VERIFICATION_KEYS = {
    "format",
    "backup_id",
    "status",
    "checked_at",
    "relations_checked",
    "rows_checked",
    "mismatches",
    "warnings",
    "restore_seconds",
    "verify_seconds",
    # Added with content and object proofs: optional, absent from older sets.
    "proven",
    "content_checked",
    "objects_checked",
    "sequences_checked",
    "partition_roots",
    "skipped",
}


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "backup_id": "voting_20250309T020000Z_emergency",
        "target": "voting",
        "kind": "emergency",
        "dag_id": "pg_backup_emergency_voting",
        "run_id": "manual__2025-03-09T02:00:00+00:00",
        "taken_at": "2025-03-09T02:00:00+00:00",
        "snapshot_at": "2025-03-09T02:00:03.120000+00:00",
        "server_version": "17.2",
        "pg_dump_version": "17.2",
        "package_version": "0.1.0",
        "compression": "zstd-3",
        "recipients": ["age1abc"],
        "dump_bytes": 123_456,
        "data": ObjectEntry(key=PREFIX + "db.dump.zst.age", bytes=50_000, sha256=SHA),
        "tables": ObjectEntry(key=PREFIX + "tables.json.age", bytes=900, sha256=SHA),
        "emergency": Emergency(reason="before schema migration", keep_days=90, triggered_by="ana"),
        "database": ICU,
        "globals": ObjectEntry(key=PREFIX + "globals.sql.age", bytes=700, sha256=SHA),
    }
    fields.update(overrides)
    return fields


def test_manifest_round_trip() -> None:
    """to_bytes then from_bytes gives an equal manifest; the encoding is stable JSON."""
    manifest = Manifest(**manifest_fields())
    data = manifest.to_bytes()
    assert Manifest.from_bytes(data) == manifest
    assert Manifest.from_bytes(data).to_bytes() == data
    assert json.loads(data)["format"] == "pg_backup/1"


def test_scheduled_manifest_round_trip_without_emergency() -> None:
    """A scheduled set has emergency null and still round-trips."""
    manifest = Manifest(**manifest_fields(kind="scheduled", emergency=None))
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert json.loads(manifest.to_bytes())["emergency"] is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param((), ("tables_list", ["Vote"]), id="extra-top"),
        pytest.param(("data",), ("rows", 5), id="extra-object"),
        pytest.param(("emergency",), ("tables", ["Vote"]), id="extra-emergency"),
    ],
)
def test_rejects_extra_fields(path: tuple[str, ...], value: tuple[str, Any]) -> None:
    """A document with any unknown field anywhere is refused (extra=forbid at every level)."""
    doc = json.loads(Manifest(**manifest_fields()).to_bytes())
    node = doc
    for key in path:
        node = node[key]
    node[value[0]] = value[1]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Manifest.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "bad",
    [SHA.upper(), SHA[:-1], SHA + "0", "z" * 64, "", "sha256:" + SHA],
)
def test_rejects_bad_sha256(bad: str) -> None:
    """Only 64 lower-case hex characters are a sha256."""
    with pytest.raises(ValidationError, match="sha256"):
        ObjectEntry(key="k", bytes=1, sha256=bad)
    doc = json.loads(Manifest(**manifest_fields()).to_bytes())
    doc["tables"]["sha256"] = bad
    with pytest.raises(ValidationError):
        Manifest.from_bytes(json.dumps(doc).encode())


def test_rejects_negative_sizes() -> None:
    """Byte counts are never negative, for the set or for an object."""
    with pytest.raises(ValidationError, match="dump_bytes"):
        Manifest(**manifest_fields(dump_bytes=-1))
    with pytest.raises(ValidationError, match="bytes"):
        ObjectEntry(key="k", bytes=-1, sha256=SHA)
    with pytest.raises(ValidationError, match="keep_days"):
        Emergency(reason="x", keep_days=0)


def test_rejects_unknown_format_and_kind() -> None:
    """Another format version or kind is not silently accepted."""
    doc = json.loads(Manifest(**manifest_fields()).to_bytes())
    with pytest.raises(ValidationError):
        Manifest.from_bytes(json.dumps({**doc, "format": "pg_backup/2"}).encode())
    with pytest.raises(ValidationError):
        Manifest.from_bytes(json.dumps({**doc, "kind": "weekly"}).encode())


def test_manifest_is_immutable() -> None:
    """A parsed manifest cannot be edited in place."""
    manifest = Manifest(**manifest_fields())
    with pytest.raises(ValidationError):
        manifest.dump_bytes = 1  # type: ignore[misc]


def test_manifest_json_keys_are_exactly_the_operational_set() -> None:
    """manifest.json is plaintext: its keys are a fixed set with no place for table data."""
    doc = json.loads(Manifest(**manifest_fields()).to_bytes())
    assert set(doc) == MANIFEST_KEYS
    assert set(doc["data"]) == OBJECT_KEYS
    assert set(doc["tables"]) == OBJECT_KEYS
    assert set(doc["emergency"]) == EMERGENCY_KEYS
    assert set(doc["database"]) == DATABASE_KEYS
    assert set(doc["globals"]) == OBJECT_KEYS
    # Targets with several destinations add their names (left out of a one-storage manifest).
    assert set(Manifest.model_fields) == MANIFEST_KEYS | {"destination", "destinations"}
    # No field is a free-form mapping that could carry per-table names or counts.
    for model in (Manifest, ObjectEntry, Emergency, Verification, DatabaseLocale, SourceIdentity):
        for name, info in model.model_fields.items():
            assert "dict" not in str(info.annotation).lower(), f"{model.__name__}.{name}"


def test_manifest_of_an_older_release_parses_without_database_and_globals() -> None:
    """A manifest written before the locale and roles were recorded still parses (both None)."""
    doc = json.loads(Manifest(**manifest_fields()).to_bytes())
    del doc["database"], doc["globals"]
    old = Manifest.from_bytes(json.dumps(doc).encode())
    assert old.database is None and old.globals is None and old.backup_id == doc["backup_id"]


def test_manifest_carries_no_table_names() -> None:
    """Nothing in the encoded manifest names a table of the source database."""
    text = Manifest(**manifest_fields()).to_bytes().decode()
    for table in ("User", "Vote", "Candidate", "Position", "AuditLog"):
        assert f'"{table}"' not in text


def test_verification_round_trip_and_keys() -> None:
    """verification.json round-trips and holds only totals, never table names."""
    record = Verification(
        backup_id="voting_20250309T020000Z_scheduled",
        status="verified",
        checked_at="2025-03-09T02:30:00+00:00",
        relations_checked=5,
        rows_checked=51_227,
        mismatches=0,
        warnings=1,
        restore_seconds=12.5,
        verify_seconds=0.8,
    )
    assert Verification.from_bytes(record.to_bytes()) == record
    assert set(json.loads(record.to_bytes())) == VERIFICATION_KEYS
    with pytest.raises(ValidationError):
        Verification.from_bytes(
            json.dumps({**json.loads(record.to_bytes()), "status": "ok"}).encode()
        )
    with pytest.raises(ValidationError):
        Verification(**{**record.model_dump(), "mismatches": -1})


def test_verification_of_an_older_release_still_parses() -> None:
    """A verification.json written before proofs of content and objects parses, fields None."""
    old = {
        "format": "pg_backup/1",
        "backup_id": "voting_20250309T020000Z_scheduled",
        "status": "verified",
        "checked_at": "2025-03-09T02:30:00+00:00",
        "relations_checked": 5,
        "rows_checked": 51_227,
        "mismatches": 0,
        "warnings": 0,
        "restore_seconds": 12.5,
        "verify_seconds": 0.8,
    }
    record = Verification.from_bytes(json.dumps(old).encode())
    assert record.proven is None and record.skipped is None and record.content_checked is None
