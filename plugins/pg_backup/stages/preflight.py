"""The preflight stage: fail in seconds, with the fix, before anything is written anywhere.

The same checks back ``pg-backup check``, which runs them one by one and prints each outcome.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pg_backup.adapters import tools
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core import layout
from pg_backup.core.dbprops import DatabaseLocale
from pg_backup.core.errors import PreflightError
from pg_backup.core.records import PreflightResult
from pg_backup.stages.runtime import Runtime

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


_LOCALE_SQL = (
    "SELECT pg_encoding_to_char(encoding), to_jsonb(d) - 'datacl' FROM pg_database d"
    " WHERE datname = current_database()"
)


def check_pg_dump(pg_dump_major: int, server_major: int) -> None:
    """pg_dump must be at least as new as the server it dumps."""
    if pg_dump_major < server_major:
        raise PreflightError(
            f"pg_dump {pg_dump_major} cannot dump a PostgreSQL {server_major} server: install "
            f"postgresql-client-{server_major} or set dump.pg_bin_dir"
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
    """Enough free space in staging for dump + compressed + encrypted copies; return free bytes."""
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


class Preflight:
    """The checks of one target, each returning a line for the operator; facts are kept."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.server_version = ""
        self.server_major = 0
        self.estimated = 0
        self.pg_dump_version = ""
        self.staging_free = 0
        self.locale: DatabaseLocale | None = None

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        """(label, check) in the order they run; a check raises PgBackupError when it fails."""
        cfg = self.rt.cfg
        return [
            ("encryption recipients", self.recipients),
            (f"source connection {cfg.source_conn_id!r}", self.source),
            ("pg_dump and pg_restore", self.client_tools),
            (f"scratch connection {cfg.scratch_conn_id!r}", self.scratch),
            ("scratch server holds the source's locale", self.scratch_locale),
            ("storage writable", self.storage),
            ("staging space", self.staging),
        ]

    def recipients(self) -> str:
        """Every public key parses."""
        return f"{len(self.rt.recipients)} recipient(s)"

    def source(self) -> str:
        """The source answers; its version, the size of its data, its encoding and locale."""
        with self.rt.source.connect(autocommit=True) as conn:
            version, major = _one(
                conn,
                "SELECT current_setting('server_version'),"
                " current_setting('server_version_num')::int / 10000",
            )
            self.estimated = int(_one(conn, _SIZE_SQL)[0])
            self.locale = DatabaseLocale.from_catalog(*_one(conn, _LOCALE_SQL))
        self.server_version, self.server_major = str(version), int(major)
        return (
            f"{self.rt.source.describe()} PostgreSQL {version}, data about "
            f"{self.estimated / 1e6:,.0f} MB"
        )

    def client_tools(self) -> str:
        """pg_dump is new enough for the source; pg_restore is there."""
        cfg = self.rt.cfg
        major, self.pg_dump_version = tools.tool_version(
            tools.tool_path("pg_dump", cfg.dump.pg_bin_dir)
        )
        if self.server_major:
            check_pg_dump(major, self.server_major)
        tools.tool_path("pg_restore", cfg.dump.pg_bin_dir)
        return self.pg_dump_version

    def scratch(self) -> str:
        """The scratch server is not the source and its login may create databases."""
        scratch = self.rt.scratch
        check_not_source(scratch, self.rt.source)
        with scratch.connect(autocommit=True) as conn:
            can_create = conn.execute(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        if not (can_create and can_create[0]):
            raise PreflightError(
                f"scratch_conn_id {scratch.conn_id!r}: user {scratch.user!r} may not create "
                f"databases on {scratch.describe()}: ALTER ROLE {scratch.user} CREATEDB, or use "
                "another login"
            )
        return scratch.describe()

    def scratch_locale(self) -> str:
        """The scratch server can create the verification database in the source's locale."""
        if self.locale is None:
            raise PreflightError("the source's locale is unknown: its check failed first")
        return self.rt.scratch_databases.check_locale(self.locale)

    def storage(self) -> str:
        """Storage answers and takes a small object."""
        store = self.rt.storage
        store.check_writable(layout.preflight_key(self.rt.cfg.name))
        return store.url

    def staging(self) -> str:
        """Staging has room for the dump and its compressed and encrypted copies."""
        cfg = self.rt.cfg
        self.staging_free = check_free_space(cfg.staging_dir, self.estimated, cfg.staging_headroom)
        return f"{self.staging_free / 1e9:,.1f} GB free in {cfg.staging_dir}"


def run_preflight(rt: Runtime) -> PreflightResult:
    """Every check of the target, in order; the first failure raises (PgBackupError)."""
    preflight = Preflight(rt)
    for label, check in preflight.checks():
        log.info("preflight: %s: %s", label, check())
    return PreflightResult(
        server_version=preflight.server_version,
        pg_dump_version=preflight.pg_dump_version,
        estimated_bytes=preflight.estimated,
        staging_free_bytes=preflight.staging_free,
    )
