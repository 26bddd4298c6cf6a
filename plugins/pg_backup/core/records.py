"""Typed records that cross task boundaries, with one XCom codec for all of them.

A task returns ``record.to_xcom()`` (a small JSON-able dict: the Airflow UI shows it as is) and
the next task rebuilds it with ``Record.from_xcom``. Records carry paths, sizes, hashes and
times, never table names, row data or secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from pg_backup.core.dbprops import DatabaseLocale
from pg_backup.core.manifest import SourceIdentity
from pg_backup.core.names import DEFAULT_DESTINATION, DumpFormat


class Record(BaseModel):
    """Base of every record: frozen, no unknown fields, JSON in and out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return self.model_dump(mode="json")

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild and validate from an XCom dict."""
        return cls.model_validate(dict(data))


def records_to_xcom(records: Mapping[str, Record]) -> dict[str, Any]:
    """A mapping of records (for example one per drilled backup) as an XCom dict."""
    return {key: record.to_xcom() for key, record in records.items()}


class StagedFile(Record):
    """A file in staging as its producer wrote it: name, size (bytes), sha256, seconds taken."""

    name: str
    bytes: int = Field(ge=0)
    sha256: str
    seconds: float = 0.0
    # S3's checksum of a multipart upload is a hash of part hashes; computed while writing
    # so the upload can be proven against the store's own acknowledgement without a reread.
    part_size: int | None = None
    composite_sha256: str | None = None
    # The worker that wrote it (Airflow's hostname): a stage on another worker that cannot see
    # the file names both hosts instead of a bare "missing" (staging that is not shared).
    host: str | None = None


class PreflightResult(Record):
    """What preflight found."""

    server_version: str
    pg_dump_version: str
    estimated_bytes: int
    staging_free_bytes: int
    # Recorded in the manifest, so a restore can tell the source apart with the source down.
    source: SourceIdentity | None = None
    # The source database's encoding and locale: the scratch database is made in it while the
    # dump runs (None from runs before it was recorded).
    locale: DatabaseLocale | None = None


class DumpResult(Record):
    """What the dump stage hands on (no table names: XCom is not the place for them)."""

    dump: StagedFile
    tables: StagedFile
    snapshot_at: str
    server_version: str
    server_major: int
    pg_dump_version: str
    encoding: str
    relations: int
    rows: int
    dump_format: DumpFormat = "custom"
    # The source's locale, and its roles and settings as a psql script (core.dbscript).
    database: DatabaseLocale | None = None
    globals: StagedFile | None = None


class EncryptResult(Record):
    """The encrypted data object, table document and roles script."""

    data: StagedFile
    tables: StagedFile
    globals: StagedFile | None = None


class UploadResult(Record):
    """Where the set went: one destination (by its config name) and its location."""

    location: str
    data_bytes: int
    data_sha256: str
    destination: str = DEFAULT_DESTINATION


class RestoreResult(Record):
    """How a restore went: the database, seconds, pg_restore jobs."""

    database: str
    seconds: float
    jobs: int
