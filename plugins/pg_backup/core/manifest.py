"""The plaintext documents stored beside each backup: manifest.json and verification.json.

They carry operational metadata only (ids, times, sizes, hashes, versions, status). Anything
about the data itself (table names, counts) lives in the encrypted tables.json.age.
"""

from __future__ import annotations

import json
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from pg_backup.core.dbprops import DatabaseLocale
from pg_backup.core.names import DumpFormat, Kind

FORMAT: Final = "pg_backup/1"
# Written only for targets with several destinations: a target with one keeps its documents
# byte for byte as they were before destinations existed.
_ONLY_WHEN_SET: Final = ("destination", "destinations", "held_by")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        """Stable JSON encoding (fields of several destinations left out when unset)."""
        doc = self.model_dump(mode="json")
        for name in _ONLY_WHEN_SET:
            if doc.get(name, 0) is None:
                del doc[name]
        return json.dumps(doc, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse and validate."""
        return cls.model_validate_json(data)


class ObjectEntry(_Doc):
    """One stored object of the set."""

    key: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Emergency(_Doc):
    """Why an emergency backup was taken and how long it is kept."""

    reason: str = Field(min_length=1)
    keep_days: int = Field(ge=1)
    triggered_by: str | None = None


class SourceIdentity(_Doc):
    """Which database on which server the set was taken from, as that server reported it.

    ``system_identifier`` comes from ``pg_control_system()`` (None where the login may not call
    it), ``port`` from the server's own ``port`` setting, ``database_oid`` from ``pg_database``.
    "Is this the source?" is decided with these, never with a host name's spelling.
    """

    system_identifier: str | None = None
    port: int = Field(ge=1, le=65535)
    database: str
    database_oid: int = Field(ge=0)


class Manifest(_Doc):
    """Written last: a set without its manifest is incomplete."""

    format: Literal["pg_backup/1"] = FORMAT
    backup_id: str
    target: str
    kind: Kind
    dag_id: str
    run_id: str
    taken_at: str
    snapshot_at: str
    server_version: str
    pg_dump_version: str
    package_version: str
    # "directory": pg_dump --format=directory --jobs, packed as one tar (dump.jobs > 1).
    dump_format: DumpFormat = "custom"
    compression: str
    encryption: Literal["age-x25519"] = "age-x25519"
    recipients: list[str]
    dump_bytes: int = Field(ge=0)
    data: ObjectEntry
    tables: ObjectEntry
    emergency: Emergency | None = None
    # The source database's encoding and locale, in the clear so that a restore by hand can
    # create the database before anything is decrypted; and the psql script of its roles and
    # settings. Both absent in sets written before they were recorded.
    database: DatabaseLocale | None = None
    globals: ObjectEntry | None = None
    # Added after pg_backup/1 was first written: sets from before hold no source identity.
    source: SourceIdentity | None = None
    # Targets with several destinations (3-2-1): the name of the destination this copy is in,
    # and every destination the set is sent to (each holds it once its own manifest is there).
    destination: str | None = None
    destinations: list[str] | None = None


class Skipped(_Doc):
    """Something the verification did not prove: what, how many, and why (no names)."""

    what: str
    count: int = Field(ge=0)
    reason: str


class Verification(_Doc):
    """The outcome of the daily verification restore (no table names: this file is plaintext).

    Fields after ``verify_seconds`` were added later and are absent from older sets.
    """

    format: Literal["pg_backup/1"] = FORMAT
    backup_id: str
    status: Literal["verified", "failed"]
    checked_at: str
    relations_checked: int = Field(ge=0)
    rows_checked: int = Field(ge=0)
    mismatches: int = Field(ge=0)
    warnings: int = Field(ge=0)
    restore_seconds: float = Field(ge=0)
    verify_seconds: float = Field(ge=0)
    # What was proven: "counts", "content" (fingerprints of the rows), "objects" (inventory).
    proven: list[str] | None = None
    content_checked: int | None = Field(None, ge=0)
    objects_checked: int | None = Field(None, ge=0)
    sequences_checked: int | None = Field(None, ge=0)
    # Partition roots compared as a whole: pg_dump loads their leaves through the root.
    partition_roots: int | None = Field(None, ge=0)
    skipped: list[Skipped] | None = None
    # Targets with several destinations: those that held the set when it was verified (the
    # same record is written to each of them, and to a late one when its upload completes).
    held_by: list[str] | None = None
