"""The upload stage: data object first, encrypted table list next, manifest last.

A set is complete only once its manifest exists, so an upload that dies half-way never leaves
a set that looks good. A rerun first withdraws the old manifest: it must never vouch for bytes
that are being replaced.
"""

from __future__ import annotations

import logging

from pg_backup.adapters import catalog_index
from pg_backup.adapters.storage import retain_until
from pg_backup.core import layout
from pg_backup.core.manifest import Emergency, Manifest, ObjectEntry
from pg_backup.core.records import DumpResult, EncryptResult, UploadResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def package_version() -> str:
    """Installed version of this package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("airflow-pg-backup")
    except PackageNotFoundError:
        return "0+unknown"


def upload_set(
    rt: Runtime, dumped: DumpResult, encrypted: EncryptResult, emergency: Emergency | None = None
) -> UploadResult:
    """Upload one backup set and prove every object arrived as staged."""
    cfg, run, store = rt.cfg, rt.run, rt.storage
    data, tables = encrypted.data, encrypted.tables
    prefix = run.prefix
    for stale in (layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT):
        if store.exists(prefix + stale):
            log.info("upload: withdrawing %s of an earlier attempt", stale)
            store.delete(prefix + stale)
    lock_until = retain_until(cfg.storage, run.taken_at)
    store.put_file(run.staging_path / data.name, prefix + layout.DATA_OBJECT, data, lock_until)
    store.put_file(
        run.staging_path / tables.name, prefix + layout.TABLES_OBJECT, tables, lock_until
    )
    script = encrypted.globals
    if script is not None:
        store.put_file(
            run.staging_path / script.name, prefix + layout.GLOBALS_OBJECT, script, lock_until
        )
    manifest = Manifest(
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
        data=ObjectEntry(key=prefix + layout.DATA_OBJECT, bytes=data.bytes, sha256=data.sha256),
        tables=ObjectEntry(
            key=prefix + layout.TABLES_OBJECT, bytes=tables.bytes, sha256=tables.sha256
        ),
        emergency=emergency,
        database=dumped.database,
        globals=ObjectEntry(
            key=prefix + layout.GLOBALS_OBJECT, bytes=script.bytes, sha256=script.sha256
        )
        if script
        else None,
    )
    store.put_bytes(prefix + layout.MANIFEST_OBJECT, manifest.to_bytes(), lock_until)
    catalog_index.record_set(store, manifest, lock_until)
    location = store.describe(prefix)
    log.info("upload: set %s complete at %s (%d bytes)", run.backup_id, location, data.bytes)
    return UploadResult(location=location, data_bytes=data.bytes, data_sha256=data.sha256)
