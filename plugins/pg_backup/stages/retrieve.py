"""Restore a set from storage: fetch, decrypt, decompress, restore, prove. One flow, two users.

The weekly drill runs each step as a task; ``pg-backup restore`` and ``verify`` run them in one
process. Every step checks what it reads: the stored objects against the manifest's sha256, the
decompressed dump against the sha256 recorded (encrypted) at dump time, the restored database
against the snapshot's counts, content fingerprints and object inventory (``stages.verify``).
Nothing here connects to the source database.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pg_backup.adapters import staging
from pg_backup.adapters.pg_restore import restore_dump
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.adapters.storage import Storage
from pg_backup.adapters.streams import decompress_file, decrypt_file
from pg_backup.core import keys, layout
from pg_backup.core.config import CheckConfig, TargetConfig
from pg_backup.core.counts import TableCount, counts_from_json
from pg_backup.core.drill_report import CheckResult
from pg_backup.core.errors import DrillError, StorageError, WrongKey
from pg_backup.core.manifest import Manifest, ObjectEntry
from pg_backup.core.proof import Proof
from pg_backup.core.records import Record, StagedFile
from pg_backup.stages.verify import log_proof, prove_database

log = logging.getLogger(__name__)


class Fetched(Record):
    """The data object and the table document, downloaded and checked against the manifest."""

    data: StagedFile
    tables: StagedFile
    seconds: float


class Decrypted(Record):
    """The compressed dump and the table document in the clear."""

    data: StagedFile
    tables: StagedFile
    seconds: float


class Opened(Record):
    """The dump pg_restore reads (a seekable file), checked against its recorded sha256."""

    dump: StagedFile
    seconds: float


class Restored(Record):
    """A restore into ``database``."""

    database: str
    seconds: float


class Proven(Record):
    """What the restored database was checked for, and how it came out.

    ``counts_ok``: rows, content and objects all as in the snapshot. ``proven`` and ``skipped``
    say what that covers (``core.proof``); ``differences`` name what differs.
    """

    relations: int
    rows: int
    counts_ok: bool
    differences: list[str]
    checks: list[dict[str, Any]]
    seconds: float
    proven: list[str] = []
    content_checked: int = 0
    objects_checked: int | None = None
    skipped: list[dict[str, Any]] = []

    @property
    def ok(self) -> bool:
        """Rows, content and objects as in the snapshot, and every check passed."""
        return self.counts_ok and all(c["ok"] for c in self.checks)


def load_manifest(store: Storage, target: str, backup_id: str) -> Manifest:
    """The manifest of one set, or an error saying the set is not complete."""
    key = layout.set_prefix(target, backup_id) + layout.MANIFEST_OBJECT
    try:
        return Manifest.from_bytes(store.get_bytes(key))
    except StorageError:
        raise DrillError(
            f"backup {backup_id} has no manifest at {store.describe(key)}: it does not exist or "
            "is incomplete (see `pg-backup list`)"
        ) from None


def _fetch_one(store: Storage, entry: ObjectEntry, dest: Path) -> StagedFile:
    got = store.download(entry.key, dest)
    if got.sha256 != entry.sha256 or got.bytes != entry.bytes:
        dest.unlink(missing_ok=True)
        raise DrillError(
            f"{store.describe(entry.key)} does not match its manifest: manifest says "
            f"{entry.bytes} bytes sha256 {entry.sha256}, storage gave {got.bytes} bytes sha256 "
            f"{got.sha256}. The stored object is corrupt or was replaced: do not rely on it"
        )
    return got


def fetch(store: Storage, manifest: Manifest, dest: Path) -> Fetched:
    """Download the data object and the table document, each checked against the manifest."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    data = _fetch_one(store, manifest.data, dest / layout.DATA_OBJECT)
    tables = _fetch_one(store, manifest.tables, dest / layout.TABLES_OBJECT)
    return Fetched(data=data, tables=tables, seconds=round(time.monotonic() - started, 3))


def decrypt(dest: Path, fetched: Fetched, identities: list[str], manifest: Manifest) -> Decrypted:
    """Decrypt data and table document; a wrong key says which recipients the set was made for."""
    started = time.monotonic()
    parsed = [keys.parse_identity(key, f"identity[{i}]") for i, key in enumerate(identities)]
    try:
        data = decrypt_file(
            dest / fetched.data.name, fetched.data, dest / layout.COMPRESSED_FILE, parsed
        )
        tables = decrypt_file(
            dest / fetched.tables.name, fetched.tables, dest / layout.TABLES_FILE, parsed
        )
    except WrongKey:
        raise DrillError(
            f"none of the {len(identities)} private key(s) given decrypts backup "
            f"{manifest.backup_id}: it was encrypted to {', '.join(manifest.recipients)}; the "
            f"keys given belong to {', '.join(keys.public_keys(identities))}. Use the private "
            "key of one of those recipients"
        ) from None
    return Decrypted(data=data, tables=tables, seconds=round(time.monotonic() - started, 3))


def table_document(dest: Path, decrypted: Decrypted) -> dict[str, Any]:
    """The decrypted ``tables.json`` (counts, and the dump's size and sha256 for newer sets)."""
    doc: dict[str, Any] = json.loads(
        staging.read_small(dest / decrypted.tables.name, decrypted.tables)
    )
    return doc


def expected_counts(dest: Path, decrypted: Decrypted) -> list[TableCount]:
    """The snapshot counts from the decrypted table document."""
    return counts_from_json(table_document(dest, decrypted))


def decompress(dest: Path, decrypted: Decrypted, manifest: Manifest) -> Opened:
    """Decompress into the dump pg_restore reads, and prove it is the dump that was staged.

    The sha256 of the dump is recorded at dump time inside the encrypted table document; sets
    written before it was (no ``dump`` entry) are checked by size against the manifest.
    """
    started = time.monotonic()
    dump = decompress_file(dest / decrypted.data.name, decrypted.data, dest / layout.DUMP_FILE)
    (dest / decrypted.data.name).unlink(missing_ok=True)  # free the space before the restore
    recorded = table_document(dest, decrypted).get("dump")
    want_bytes = recorded["bytes"] if recorded else manifest.dump_bytes
    if dump.bytes != want_bytes or (recorded and dump.sha256 != recorded["sha256"]):
        (dest / dump.name).unlink(missing_ok=True)
        raise DrillError(
            f"backup {manifest.backup_id}: the decompressed dump is {dump.bytes} bytes sha256 "
            f"{dump.sha256}, but the dump stage recorded {want_bytes} bytes"
            + (f" sha256 {recorded['sha256']}" if recorded else "")
            + ": the set is not the one that was verified; do not rely on it"
        )
    return Opened(dump=dump, seconds=round(time.monotonic() - started, 3))


def restore(
    target: PgEndpoint, dest: Path, opened: Opened, cfg: TargetConfig, jobs: int
) -> Restored:
    """pg_restore -j the opened dump into ``target`` (an existing, empty database)."""
    path = dest / opened.dump.name
    staging.check_present(path, opened.dump)
    seconds = restore_dump(target, str(path), jobs, cfg.dump.pg_bin_dir)
    return Restored(database=target.dbname, seconds=round(seconds, 3))


def run_checks(target: PgEndpoint, checks: list[CheckConfig]) -> list[CheckResult]:
    """Each check's SQL must return a single true, or no rows at all."""
    results: list[CheckResult] = []
    with target.connect(autocommit=True) as conn:
        for check in checks:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(check.sql)
                    rows = cur.fetchmany(6) if cur.description else []
            except Exception as exc:  # noqa: BLE001 - a broken check is a failed check
                results.append(CheckResult(check.name, False, f"error: {str(exc).strip()[:300]}"))
                continue
            if len(rows) == 1 and len(rows[0]) == 1 and isinstance(rows[0][0], bool):
                ok = rows[0][0]
                detail = "returned true" if ok else "returned false"
            else:
                ok = not rows
                detail = (
                    "no rows"
                    if ok
                    else f"{len(rows)}{'+' if len(rows) > 5 else ''} row(s), e.g. {rows[0]!r}"
                )
            results.append(CheckResult(check.name, bool(ok), detail))
    return results


def prove_restore(target: PgEndpoint, doc: dict[str, Any], cfg: TargetConfig) -> Proof:
    """Rows, content and objects of a restored database against the set's table document."""
    proof = prove_database(target, doc, cfg)
    log_proof(proof, f"prove {target.dbname}")
    if proof.ok:
        log.info("prove %s done: %s", target.dbname, proof.summary())
    return proof


def prove(
    target: PgEndpoint, doc: dict[str, Any], cfg: TargetConfig, checks: list[CheckConfig]
) -> Proven:
    """Prove the restored database against the snapshot and run the invariant checks.

    :param doc: the set's decrypted table document (``table_document``)
    """
    from dataclasses import asdict

    started = time.monotonic()
    proof = prove_restore(target, doc, cfg)
    if not proof.ok:
        log.error("prove %s: differs from the snapshot:\n%s", target.dbname, proof.report())
    differences = [d.describe() for d in proof.rows.differences]
    if proof.objects is not None:
        differences += [d.describe() for d in proof.objects.differences]
    return Proven(
        relations=proof.rows.checked,
        rows=proof.rows.rows,
        counts_ok=proof.ok,
        differences=differences,
        checks=[asdict(c) for c in run_checks(target, checks)],
        seconds=round(time.monotonic() - started, 3),
        proven=proof.proven,
        content_checked=proof.rows.content_checked,
        objects_checked=proof.objects.checked if proof.objects else None,
        skipped=proof.skipped(),
    )


def open_set(
    store: Storage,
    target: str,
    backup_id: str,
    identities: list[str],
    work: Path,
    say: Callable[[str], None] = log.info,
) -> tuple[Manifest, Decrypted, Opened]:
    """Fetch, check, decrypt and decompress one set into ``work`` (the CLI's first half)."""
    manifest = load_manifest(store, target, backup_id)
    started = time.monotonic()
    fetched = fetch(store, manifest, work)
    say(
        f"fetched   {manifest.data.bytes / 1e6:,.1f} MB, sha256 matches the manifest "
        f"({fetched.seconds:.1f} s)"
    )
    decrypted = decrypt(work, fetched, identities, manifest)
    say(f"decrypted with the private key ({decrypted.seconds:.1f} s)")
    opened = decompress(work, decrypted, manifest)
    say(
        f"decompressed {opened.dump.bytes / 1e6:,.1f} MB dump, sha256 matches "
        f"({opened.seconds:.1f} s, {time.monotonic() - started:.1f} s so far)"
    )
    return manifest, decrypted, opened
