"""The restore stage: a scratch database per backup, pg_restore -j into it, dropped afterwards."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from pg_backup import layout, staging, tools
from pg_backup.config import TargetConfig
from pg_backup.dump import quote_ident
from pg_backup.pgconn import PgEndpoint, endpoint
from pg_backup.staging import StagedFile

log = logging.getLogger(__name__)

_EXTENSION = re.compile(r"^\d+;\s+\d+\s+\d+\s+EXTENSION\s+-\s+(\S+)", re.M)


class RestoreError(RuntimeError):
    """The dump cannot be restored where we were asked to restore it."""


@dataclass(frozen=True)
class RestoreResult:
    """How the restore went."""

    database: str
    seconds: float
    jobs: int

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)


def refuse_source(scratch: PgEndpoint, source: PgEndpoint, database: str) -> None:
    """Never create, restore into or drop anything in the source database."""
    if scratch.with_db(database).same_database_as(source):
        raise RestoreError(
            f"refusing to use {scratch.with_db(database).describe()}: it is the source database "
            f"of connection {source.conn_id!r}"
        )


def create_database(server: PgEndpoint, name: str, encoding: str = "UTF8") -> None:
    """(Re)create an empty database; a retried task gets a clean one, never a twin."""
    with server.connect(autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        # template0 + C locale accept any encoding, so the source's encoding always works.
        conn.execute(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING '{encoding}'"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    log.info("created database %s on %s", name, server.describe())


def drop_database(server: PgEndpoint, name: str) -> bool:
    """Drop a database if it exists (WITH FORCE ends sessions left by a killed restore)."""
    with server.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    return bool(exists)


def create_scratch_db(cfg: TargetConfig, run: layout.RunInfo, encoding: str) -> str:
    """Set-up task: the empty verification database ``pgb_verify_<backup_id>``."""
    scratch = endpoint(cfg.scratch_conn_id)
    name = layout.scratch_db_name(run.backup_id)
    refuse_source(scratch, endpoint(cfg.source_conn_id), name)
    create_database(scratch, name, encoding)
    return name


def drop_scratch_db(cfg: TargetConfig, run: layout.RunInfo) -> bool:
    """Tear-down task: drop the verification database, whatever happened before."""
    scratch = endpoint(cfg.scratch_conn_id)
    name = layout.scratch_db_name(run.backup_id)
    refuse_source(scratch, endpoint(cfg.source_conn_id), name)
    dropped = drop_database(scratch, name)
    log.info("teardown: %s %s", "dropped" if dropped else "no database", name)
    return dropped


def required_extensions(pg_restore: str, dump_file: str) -> list[str]:
    """Extensions the dump will CREATE, read from its table of contents."""
    toc = tools.run([pg_restore, "--list", dump_file], {})
    return sorted(set(_EXTENSION.findall(toc)))


def check_extensions(server: PgEndpoint, needed: list[str]) -> None:
    """Fail before restoring if the target server cannot create an extension the dump needs."""
    if not needed:
        return
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", (needed,)
        ).fetchall()
    missing = sorted(set(needed) - {r[0] for r in rows})
    if missing:
        raise RestoreError(
            f"the server {server.describe()} lacks extension(s) {', '.join(missing)} that the "
            "dump needs: install them there (for example the postgresql-<major>-<name> package) "
            "or restore onto a server that has them"
        )


def restore_dump(
    target: PgEndpoint, dump_file: str, jobs: int, pg_bin_dir: str | None = None
) -> float:
    """pg_restore -j into an existing empty database; any error fails with pg_restore's messages."""
    pg_restore = tools.tool_path("pg_restore", pg_bin_dir)
    check_extensions(target, required_extensions(pg_restore, dump_file))
    argv = [
        pg_restore,
        f"--jobs={jobs}",
        "--no-owner",
        "--no-privileges",
        f"--dbname={target.dbname}",
        dump_file,
    ]
    started = time.monotonic()
    tools.run(argv, target.libpq_env(), hint=f" restoring into {target.describe()}")
    return time.monotonic() - started


def restore_staged(
    cfg: TargetConfig, run: layout.RunInfo, dump: StagedFile, database: str
) -> RestoreResult:
    """Restore the staged dump (checked against its hash first) into the scratch database."""
    path = run.staging_path / dump.name
    staging.verify_file(path, dump, "restore")
    scratch = endpoint(cfg.scratch_conn_id).with_db(database)
    refuse_source(scratch, endpoint(cfg.source_conn_id), database)
    seconds = restore_dump(scratch, str(path), cfg.restore.jobs, cfg.dump.pg_bin_dir)
    log.info(
        "restore done: %s into %s, %.1f MB/s, %.1f s (pg_restore -j %d)",
        f"{dump.bytes / 1e6:,.1f} MB",
        database,
        dump.bytes / 1e6 / max(seconds, 1e-9),
        seconds,
        cfg.restore.jobs,
    )
    return RestoreResult(database=database, seconds=round(seconds, 3), jobs=cfg.restore.jobs)
