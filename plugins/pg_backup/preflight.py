"""The preflight stage: fail in seconds, with the fix, before anything is written anywhere."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pg_backup import tools
from pg_backup.config import TargetConfig
from pg_backup.encrypt import parse_recipient
from pg_backup.pgconn import PgEndpoint, endpoint
from pg_backup.storage import Storage, open_storage

log = logging.getLogger(__name__)

# Staging holds the dump, its compressed copy and the encrypted copy at once; the dump of a
# table is about its heap size (indexes are not dumped), compressed copies are smaller.
STAGING_FACTOR = 2.0

_SIZE_SQL = """
SELECT coalesce(sum(pg_table_size(c.oid)), 0)
     + pg_total_relation_size('pg_catalog.pg_largeobject')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\\_%%'
"""


class PreflightError(RuntimeError):
    """A precondition of the backup does not hold; the message says how to fix it."""


@dataclass(frozen=True)
class PreflightResult:
    """What preflight found (an XCom-sized record)."""

    server_version: str
    pg_dump_version: str
    estimated_bytes: int
    staging_free_bytes: int

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)


def check_pg_dump(pg_dump_major: int, server_major: int) -> None:
    """pg_dump must be at least as new as the server it dumps."""
    if pg_dump_major < server_major:
        raise PreflightError(
            f"pg_dump {pg_dump_major} cannot dump a PostgreSQL {server_major} server: install "
            f"postgresql-client-{server_major} or set pg_bin_dir"
        )


def check_not_source(scratch: PgEndpoint, source: PgEndpoint) -> None:
    """The scratch connection must not point at the source database."""
    if scratch.same_database_as(source):
        raise PreflightError(
            f"scratch_conn_id {scratch.conn_id!r} points at the source database "
            f"{source.describe()}: point it at a scratch server, or at least another database "
            "(for example 'postgres') where pgb_verify_* databases may be created and dropped"
        )


def check_free_space(staging_dir: str, estimated: int, headroom: float) -> int:
    """Enough free space in staging for dump + compressed + encrypted copies."""
    path = Path(staging_dir)
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    need = int(estimated * STAGING_FACTOR * headroom)
    if free < need:
        raise PreflightError(
            f"staging_dir {staging_dir} has {free / 1e9:.2f} GB free, the backup needs about "
            f"{need / 1e9:.2f} GB (source data {estimated / 1e9:.2f} GB x {STAGING_FACTOR} x "
            f"staging_headroom {headroom}): free space or point staging_dir at a larger volume"
        )
    return free


def _one(conn: Any, sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None, sql  # aggregates and settings always return a row
    return tuple(row)


def run_preflight(
    cfg: TargetConfig,
    source: PgEndpoint | None = None,
    scratch: PgEndpoint | None = None,
    store: Storage | None = None,
) -> PreflightResult:
    """Check source, tools, scratch server, storage, staging space and keys."""
    for index, recipient in enumerate(cfg.encryption.recipients):
        parse_recipient(recipient, f"encryption.recipients[{index}]")
    source = source or endpoint(cfg.source_conn_id)
    scratch = scratch or endpoint(cfg.scratch_conn_id)
    check_not_source(scratch, source)

    with source.connect(autocommit=True) as conn:
        version, major = _one(
            conn,
            "SELECT current_setting('server_version'),"
            " current_setting('server_version_num')::int / 10000",
        )
        estimated = int(_one(conn, _SIZE_SQL)[0])
    log.info("preflight: source %s is PostgreSQL %s", source.describe(), version)

    pg_dump_major, pg_dump_version = tools.tool_version(
        tools.tool_path("pg_dump", cfg.dump.pg_bin_dir)
    )
    check_pg_dump(pg_dump_major, int(major))
    tools.tool_path("pg_restore", cfg.dump.pg_bin_dir)

    with scratch.connect(autocommit=True) as conn:
        can_create = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if not (can_create and can_create[0]):
        raise PreflightError(
            f"scratch_conn_id {scratch.conn_id!r}: user {scratch.user!r} may not create databases "
            f"on {scratch.describe()}: ALTER ROLE {scratch.user} CREATEDB, or use another login"
        )
    log.info("preflight: scratch server %s reachable", scratch.describe())

    store = store or open_storage(cfg.storage)
    store.check_writable(f"{cfg.name}/.preflight")
    log.info("preflight: storage %s writable", store.url)

    free = check_free_space(cfg.staging_dir, estimated, cfg.staging_headroom)
    log.info(
        "preflight ok: pg_dump %s, source data about %.1f MB, staging free %.1f GB",
        pg_dump_version,
        estimated / 1e6,
        free / 1e9,
    )
    return PreflightResult(
        server_version=str(version),
        pg_dump_version=pg_dump_version,
        estimated_bytes=estimated,
        staging_free_bytes=free,
    )
