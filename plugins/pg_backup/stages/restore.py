"""The restore stage: the staged dump into ``pgb_verify_<backup id>`` on the scratch server.

The scratch database is made by a setup task and dropped by a teardown, whatever happened in
between. The dump's hash is checked in the pass that reads it before pg_restore starts.
"""

from __future__ import annotations

import json
import logging

from pg_backup.adapters import staging
from pg_backup.adapters.archive import dump_format_of, unpack_dump
from pg_backup.adapters.pg_restore import restore_dump
from pg_backup.core import layout
from pg_backup.core.dbprops import DatabaseGlobals, DatabaseLocale
from pg_backup.core.records import DumpResult, RestoreResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def create_scratch_db(rt: Runtime, locale: DatabaseLocale | None) -> str:
    """Set-up task: the empty verification database, in the source's encoding and locale.

    :param locale: as preflight read it (``PreflightResult.locale``), so this runs beside the
        dump; None (a run from before preflight recorded it) gives UTF8 with the C locale. The
        restore makes the database again in the dump's own locale should that differ
        (``restore_staged``).
    """
    name = layout.scratch_db_name(rt.run.backup_id)
    rt.scratch_databases.create(name, locale or "UTF8")
    return name


def drop_scratch_db(rt: Runtime) -> bool:
    """Tear-down task: drop the verification database, whatever happened before."""
    name = layout.scratch_db_name(rt.run.backup_id)
    dropped = rt.scratch_databases.drop(name)
    log.info("teardown: %s %s", "dropped" if dropped else "no database", name)
    return dropped


def restore_staged(
    rt: Runtime,
    dumped: DumpResult,
    database: str,
    attempt: int = 1,
    made_in: DatabaseLocale | None = None,
) -> RestoreResult:
    """Restore the staged dump (checked against its hash first) into the scratch database.

    :param attempt: the task's try number; a retry starts again from an empty database, since
        the attempt before may have restored half the objects
    :param made_in: the locale ``create_scratch_db`` made the database in (preflight's); when
        it is not the dump's own (the source database was made again between preflight and
        the dump, or a run from before preflight recorded it), the database is made again in
        the dump's
    """
    cfg, dump = rt.cfg, dumped.dump
    databases = rt.scratch_databases
    wanted = dumped.database or dumped.encoding
    target = databases.endpoint(database)
    store = rt.staging
    # Unpacking a directory-format tar reads it once and checks its hash in that same pass.
    packed = dumped.dump_format == "directory"
    with store.local_copy(dump, "pg_restore -j reads it at random", checked=not packed) as path:
        unpacked = None
        if dump_format_of(path) == "directory":
            unpacked = unpack_dump(path, store.workdir / layout.DUMP_DIR, dump)
        elif packed:
            staging.verify_file(path, dump, "restore")
        try:
            # Only once the dump is proven: a dump failing its check leaves nothing made here.
            if attempt > 1 or made_in != wanted:
                if attempt == 1:
                    log.info("restore: making %s again, in the dump's locale %s", database, wanted)
                databases.create(database, wanted)
            seconds = restore_dump(
                target, str(unpacked or path), cfg.restore.jobs, cfg.dump.pg_bin_dir
            )
        finally:
            if unpacked is not None:
                staging.remove_dir(unpacked)
    _configure(rt, dumped, database)
    log.info(
        "restore done: %s into %s, %.1f MB/s, %.1f s (pg_restore -j %d)",
        f"{dump.bytes / 1e6:,.1f} MB",
        database,
        dump.bytes / 1e6 / max(seconds, 1e-9),
        seconds,
        cfg.restore.jobs,
    )
    return RestoreResult(database=database, seconds=round(seconds, 3), jobs=cfg.restore.jobs)


def _configure(rt: Runtime, dumped: DumpResult, database: str) -> None:
    """The source's database settings and comment on the scratch copy.

    Not its owner and grants: the scratch server need not have the source's roles.
    """
    raw = json.loads(rt.staging.read_small(dumped.tables))
    if "globals" not in raw:
        return
    done = rt.scratch_databases.configure(
        database, DatabaseGlobals.model_validate(raw["globals"]), False
    )
    for failed in done.failed:
        log.warning("restore: a database setting of the source was not applied: %s", failed)
