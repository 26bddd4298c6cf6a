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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_backup.adapters import staging
from pg_backup.adapters.databases import Databases
from pg_backup.adapters.dbprops import RolesMade, create_missing_roles, read_globals
from pg_backup.adapters.pg_restore import restore_dump
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.adapters.storage import Storage
from pg_backup.adapters.streams import decompress_file, decrypt_file
from pg_backup.core import keys, layout
from pg_backup.core.config import CheckConfig, TargetConfig
from pg_backup.core.counts import TableCount, counts_from_json
from pg_backup.core.dbprops import Comparison as DbComparison
from pg_backup.core.dbprops import DatabaseGlobals, DatabaseLocale, compare
from pg_backup.core.drill_report import CheckResult
from pg_backup.core.errors import (
    DrillError,
    RestoreError,
    SetUnavailable,
    StorageError,
    WrongKey,
)
from pg_backup.core.manifest import Manifest, ObjectEntry
from pg_backup.core.proof import Proof
from pg_backup.core.records import Record, StagedFile
from pg_backup.stages.verify import log_proof, prove_database

log = logging.getLogger(__name__)


class Fetched(Record):
    """The set's objects, downloaded and checked against the manifest."""

    data: StagedFile
    tables: StagedFile
    seconds: float
    globals: StagedFile | None = None


class Decrypted(Record):
    """The compressed dump, the table document and the roles script in the clear."""

    data: StagedFile
    tables: StagedFile
    seconds: float
    globals: StagedFile | None = None


class Opened(Record):
    """The dump pg_restore reads (a seekable file), checked against its recorded sha256."""

    dump: StagedFile
    seconds: float


class Restored(Record):
    """A restore into ``database`` (``owners``: with the source's owners and grants)."""

    database: str
    seconds: float
    owners: bool = False


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
        raise SetUnavailable(
            f"backup {backup_id} has no manifest at {store.describe(key)}: it does not exist or "
            "is incomplete (see `pg-backup list`)"
        ) from None


def _fetch_one(store: Storage, entry: ObjectEntry, dest: Path) -> StagedFile:
    got = store.download(entry.key, dest)
    if got.sha256 != entry.sha256 or got.bytes != entry.bytes:
        dest.unlink(missing_ok=True)
        raise SetUnavailable(
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
    script = None
    if manifest.globals is not None:
        script = _fetch_one(store, manifest.globals, dest / layout.GLOBALS_OBJECT)
    return Fetched(
        data=data, tables=tables, globals=script, seconds=round(time.monotonic() - started, 3)
    )


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
        script = None
        if fetched.globals is not None:
            script = decrypt_file(
                dest / fetched.globals.name, fetched.globals, dest / layout.GLOBALS_FILE, parsed
            )
    except WrongKey:
        raise DrillError(
            f"none of the {len(identities)} private key(s) given decrypts backup "
            f"{manifest.backup_id}: it was encrypted to {', '.join(manifest.recipients)}; the "
            f"keys given belong to {', '.join(keys.public_keys(identities))}. Use the private "
            "key of one of those recipients"
        ) from None
    return Decrypted(
        data=data, tables=tables, globals=script, seconds=round(time.monotonic() - started, 3)
    )


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
    target: PgEndpoint,
    dest: Path,
    opened: Opened,
    cfg: TargetConfig,
    jobs: int,
    owners: bool = False,
) -> Restored:
    """pg_restore -j the opened dump into ``target`` (an existing, empty database).

    :param owners: restore owners and grants (the roles must exist: ``make_roles``); without,
        the restoring login owns everything and nothing is granted
    """
    path = dest / opened.dump.name
    staging.check_present(path, opened.dump)
    seconds = restore_dump(target, str(path), jobs, cfg.dump.pg_bin_dir, owners=owners)
    return Restored(database=target.dbname, seconds=round(seconds, 3), owners=owners)


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


# --- the database as it was: locale, settings, roles, owners, grants ----------------------


def database_locale(manifest: Manifest) -> DatabaseLocale | str:
    """The encoding and locale a restore database is created with: the source's.

    Sets written before the locale was recorded get UTF8 with the C locale, as they were
    verified.
    """
    return manifest.database or "UTF8"


def database_globals(
    dest: Path, decrypted: Decrypted, manifest: Manifest
) -> DatabaseGlobals | None:
    """The source's settings, roles, owners and grants, from the decrypted table document.

    None for sets written before they were recorded.

    :raises DrillError: the manifest's locale (plaintext) is not the one recorded, encrypted, at
        dump time: the manifest was changed
    """
    raw = table_document(dest, decrypted).get("globals")
    if raw is None:
        return None
    doc = DatabaseGlobals.model_validate(raw)
    if manifest.database is not None and manifest.database != doc.locale:
        raise DrillError(
            f"backup {manifest.backup_id}: manifest.json says the source database was "
            f"{manifest.database.describe()}, but the dump recorded {doc.locale.describe()}: "
            "the manifest was changed after the backup; do not rely on it"
        )
    return doc


def make_roles(server: PgEndpoint, doc: DatabaseGlobals) -> RolesMade:
    """Create the roles the database needs that ``server`` lacks (never altering one)."""
    with server.connect(autocommit=True) as conn:
        return create_missing_roles(conn, doc, server.describe())


def as_it_was(
    target: PgEndpoint, doc: DatabaseGlobals, cfg: TargetConfig, created: list[str] | None = None
) -> DbComparison:
    """Read the restored database's catalogs the way the dump read the source's, and compare.

    :param created: roles the restore created (differences of other roles are notes)
    """
    with target.connect(autocommit=True) as conn, conn.cursor() as cur:
        restored = read_globals(cur, cfg.dump.schemas, cfg.dump.exclude_schemas)
    return compare(doc, restored, created=set(created or []))


def as_it_was_check(result: DbComparison, owners: bool) -> CheckResult:
    """The comparison as one drill check (``owners``: the restore kept owners and grants)."""
    name = "as it was: locale, settings" + (", roles, owners and grants" if owners else "")
    failures = result.failures(owners)
    if failures:
        return CheckResult(name, False, "; ".join(failures[:20]))
    detail = "identical to the source"
    if owners:
        detail += f" ({result.objects} objects' owners and grants)"
    return CheckResult(name, True, "; ".join([detail, *result.notes]))


@dataclass
class RestoreOutcome:
    """What ``restore_from_storage`` did, for the command line to report (names included)."""

    backup_id: str
    snapshot_at: str
    database: str
    locale: str
    roles: bool
    relations: int = 0
    rows: int = 0
    # What the proof covered (rows, content, objects) and, when it failed, its report.
    proof: str = ""
    differences: list[str] = field(default_factory=list)
    made: RolesMade | None = None
    settings_applied: int = 0
    settings_failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # Without roles: objects whose owners and grants were not restored (None: the set has no
    # record of them, it predates their capture).
    not_restored: int | None = None
    # Catalogs compared with the source's (sets written before they were captured: not).
    compared: bool = False
    as_it_was: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Rows exact, and the database as it was in everything this restore set out to do."""
        return not (self.differences or self.as_it_was or self.settings_failed)


def restore_from_storage(
    store: Storage,
    cfg: TargetConfig,
    backup_id: str,
    identities: list[str],
    databases: Databases,
    target: PgEndpoint,
    work: Path,
    jobs: int,
    roles: bool = False,
    say: Callable[[str], None] = log.info,
) -> RestoreOutcome:
    """Restore a set from storage into a new database ``target``, as the source was.

    In this order, so that a refusal comes before anything is downloaded or created: the
    manifest; the database, created in the source's encoding and locale (a server lacking them
    is refused here); the set, fetched, checked and decrypted; with ``roles``, the roles the
    database needs that the server lacks; pg_restore (with owners and grants when ``roles``);
    the database's settings and comment (and with roles its owner and grants); then the counts
    and the catalogs compared with the source's.

    :param databases: the target server (its maintenance database), the source protected
    :raises PgBackupError: anything an operator must fix; a database this call created is
        dropped again if it fails before pg_restore starts
    """
    started = time.monotonic()
    manifest = load_manifest(store, cfg.name, backup_id)
    if roles and manifest.globals is None:
        raise RestoreError(
            f"backup {backup_id} records no roles (it was made before roles were captured): "
            "restore it without --roles, then create its roles and grants by hand"
        )
    name = target.dbname
    locale = database_locale(manifest)
    existed = databases.exists(name)
    databases.create(name, locale)
    out = RestoreOutcome(
        backup_id=manifest.backup_id,
        snapshot_at=manifest.snapshot_at,
        database=target.describe(),
        locale=locale.describe() if isinstance(locale, DatabaseLocale) else f"{locale}, C locale",
        roles=roles,
    )
    say(f"created   database {out.database} ({out.locale})")
    try:
        manifest, decrypted, opened = open_set(store, cfg.name, backup_id, identities, work, say)
        doc = database_globals(work, decrypted, manifest)
        if roles and doc is not None:
            out.made = make_roles(databases.server, doc)
            say(
                f"roles     {len(out.made.created)} created, {len(out.made.existing)} existed "
                "(left as they are)"
            )
    except BaseException:
        if not existed:
            databases.drop(name)
        raise
    created = out.made.created if out.made else None
    restored = restore(target, work, opened, cfg, jobs, owners=roles)
    say(
        f"restored  with pg_restore -j {jobs}"
        + (", owners and grants included" if roles else ", without owners and grants")
        + f" ({restored.seconds:.1f} s)"
    )
    if doc is not None:
        configured = databases.configure(name, doc, roles, created)
        out.settings_applied, out.settings_failed = configured.applied, configured.failed
        out.skipped = [
            f"membership of {m}" for m in (out.made.skipped_memberships if out.made else [])
        ]
        out.skipped += configured.skipped
        compared = as_it_was(target, doc, cfg, created)
        out.compared, out.notes = True, compared.notes
        out.as_it_was = compared.failures(owners=roles)
        if not roles:
            out.not_restored = compared.lost
    proof = prove_restore(target, table_document(work, decrypted), cfg)
    out.proof = proof.summary()
    out.relations, out.rows = proof.rows.checked, proof.rows.rows
    if not proof.ok:
        out.differences = proof.report().splitlines()
    out.notes = [*proof.notes(), *out.notes]
    out.seconds = round(time.monotonic() - started, 3)
    return out
