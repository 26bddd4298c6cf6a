"""The upload stage: data object first, encrypted table list next, manifest last.

A set is complete only once its manifest exists, so an upload that dies half-way never leaves
a set that looks good. A rerun (a retry, or a task cleared in the UI) never makes a good set
worse:

* what storage already holds is compared with what this run staged (size and sha256, from
  the store's own checksum where it has one): equal objects are not written again, and when
  the whole set is already there, vouched for by its manifest, the upload does nothing;
* before anything is withdrawn or replaced, the upload proves it can finish: every staged file
  it still has to send is there, and matches its record. A manifest about to be replaced is
  withdrawn first (with the set's verification record): it must never vouch for bytes that are
  being replaced. If the staged files are gone, nothing in storage is touched.
"""

from __future__ import annotations

import logging

from pg_backup.adapters import catalog_index
from pg_backup.adapters.storage import Storage, retain_until
from pg_backup.core import layout
from pg_backup.core.errors import StagedFileError, StorageError
from pg_backup.core.manifest import Emergency, Manifest, ObjectEntry, SourceIdentity
from pg_backup.core.records import DumpResult, EncryptResult, StagedFile, UploadResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def package_version() -> str:
    """Installed version of this package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airflow-pg-backup")
    except PackageNotFoundError:
        return "0+unknown"


def build_manifest(
    rt: Runtime,
    dumped: DumpResult,
    encrypted: EncryptResult,
    emergency: Emergency | None,
    source: SourceIdentity | None,
    destinations: list[str] | None = None,
) -> Manifest:
    """The manifest this run's set gets (what it vouches for: the staged objects).

    :param destinations: every destination the set goes to, when the target has several
        (``rt.cfg`` is then the one this copy goes to: ``Runtime.at``)
    """
    cfg, run = rt.cfg, rt.run
    data, tables = encrypted.data, encrypted.tables
    return Manifest(
        backup_id=run.backup_id,
        target=run.target,
        kind=run.kind,
        dag_id=run.dag_id,
        run_id=run.run_id,
        taken_at=run.taken_at,
        snapshot_at=dumped.snapshot_at,
        server_version=dumped.server_version,
        pg_dump_version=dumped.pg_dump_version,
        package_version=package_version(),
        dump_format=dumped.dump_format,
        compression=f"zstd-{cfg.compress.level}",
        recipients=list(cfg.encryption.recipients),
        dump_bytes=dumped.dump.bytes,
        data=ObjectEntry(key=run.prefix + layout.DATA_OBJECT, bytes=data.bytes, sha256=data.sha256),
        tables=ObjectEntry(
            key=run.prefix + layout.TABLES_OBJECT, bytes=tables.bytes, sha256=tables.sha256
        ),
        emergency=emergency,
        database=dumped.database,
        globals=ObjectEntry(
            key=run.prefix + layout.GLOBALS_OBJECT,
            bytes=encrypted.globals.bytes,
            sha256=encrypted.globals.sha256,
        )
        if encrypted.globals
        else None,
        source=source,
        destination=cfg.destinations[0].name if destinations else None,
        destinations=destinations,
    )


def stored_manifest(store: Storage, key: str) -> Manifest | None:
    """The manifest in storage, or None when there is none (or it cannot be read)."""
    if not store.exists(key):
        return None
    try:
        return Manifest.from_bytes(store.get_bytes(key))
    except (StorageError, ValueError) as exc:
        log.warning("upload: the stored %s cannot be read (%s): it will be replaced", key, exc)
        return None


def _vouches_for(stored: Manifest | None, wanted: Manifest) -> bool:
    """The stored manifest describes exactly the objects this run would upload."""
    return (
        stored is not None
        and stored.backup_id == wanted.backup_id
        and stored.data == wanted.data
        and stored.tables == wanted.tables
        and stored.globals == wanted.globals
    )


def prove_can_finish(rt: Runtime, files: list[StagedFile], before_withdrawing: bool) -> None:
    """Every staged file still to be sent is there (and, before a withdrawal, matches).

    :raises StagedFileError: naming the file; nothing in storage has been touched yet
    """
    for staged in files:
        try:
            rt.staging.check(staged, full=before_withdrawing)
        except StagedFileError as exc:
            raise StagedFileError(
                f"upload cannot rewrite set {rt.run.backup_id}: {exc.summary}. Nothing in "
                f"storage was changed: the set at {rt.storage.describe(rt.run.prefix)} is as it "
                "was (`pg-backup list` shows its state)"
            ) from None


def upload_set(
    rt: Runtime,
    dumped: DumpResult,
    encrypted: EncryptResult,
    emergency: Emergency | None = None,
    source: SourceIdentity | None = None,
    destinations: list[str] | None = None,
) -> UploadResult:
    """Upload one backup set to ``rt``'s storage and prove every object arrived as staged.

    A no-op when the set is already there as staged. With several destinations, ``rt`` is
    the runtime of one of them (``Runtime.at``) and each destination is its own call.

    :param source: the source's identity from preflight, recorded in the manifest
    :param destinations: every destination of the set (recorded in the manifest), or None
        for a target with one storage
    :raises StagedFileError: a staged file needed is gone or changed (storage untouched)
    :raises StorageError: the store refused or holds other bytes than were sent
    """
    cfg, run, store = rt.cfg, rt.run, rt.storage
    data, tables = encrypted.data, encrypted.tables
    prefix = run.prefix
    manifest = build_manifest(rt, dumped, encrypted, emergency, source, destinations)
    location = store.describe(prefix)
    result = UploadResult(
        location=location,
        data_bytes=data.bytes,
        data_sha256=data.sha256,
        destination=cfg.destinations[0].name,
    )

    objects = [(data, layout.DATA_OBJECT), (tables, layout.TABLES_OBJECT)]
    if encrypted.globals is not None:
        objects.append((encrypted.globals, layout.GLOBALS_OBJECT))
    pending = [(staged, name) for staged, name in objects if not store.holds(prefix + name, staged)]
    current = stored_manifest(store, prefix + layout.MANIFEST_OBJECT)
    if not pending and _vouches_for(current, manifest):
        log.info(
            "upload: set %s is already in storage exactly as staged (%s): nothing to do",
            run.backup_id,
            location,
        )
        return result

    withdraw = [
        name
        for name in (layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT)
        if store.exists(prefix + name)
    ]
    prove_can_finish(rt, [staged for staged, _ in pending], before_withdrawing=bool(withdraw))
    for name in withdraw:
        log.info("upload: withdrawing %s of an earlier attempt", name)
        store.delete(prefix + name)
    lock_until = retain_until(cfg.storage, run.taken_at)
    for staged, name in pending:
        rt.staging.send(staged, store, prefix + name, lock_until)
    for staged, name in objects:
        if (staged, name) not in pending:
            log.info("upload: %s already in storage exactly as staged: kept", name)
    store.put_bytes(prefix + layout.MANIFEST_OBJECT, manifest.to_bytes(), lock_until)
    catalog_index.record_set(store, manifest, lock_until)
    log.info("upload: set %s complete at %s (%d bytes)", run.backup_id, location, data.bytes)
    return result
