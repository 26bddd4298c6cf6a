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
from pg_backup.adapters.databases import Databases
from pg_backup.adapters.pgconn import PgEndpoint, source_identity
from pg_backup.core import layout
from pg_backup.core.counts import LOCK_BUDGET_SQL, lock_budget_problem
from pg_backup.core.dbprops import DatabaseLocale
from pg_backup.core.errors import PgBackupError, PreflightError
from pg_backup.core.fingerprint import session_options
from pg_backup.core.manifest import SourceIdentity
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

# On-disk sizes understate a dump of compressible data many times over: PostgreSQL compresses
# long values (TOAST), pg_dump writes them out in full. So each table's rows are measured as
# pg_dump writes them: octet_length() of text and bytea reads the uncompressed length from
# the value's header without decompressing it; other types are measured in their text form.
# Tables above SAMPLE_PAGES heap pages are measured on a page sample and scaled up.
SAMPLE_PAGES = 1024
_TABLES_SQL = """
SELECT n.nspname, c.relname,
       pg_relation_size(c.oid) / current_setting('block_size')::int AS pages,
       array_agg(a.attname ORDER BY a.attnum),
       array_agg(CASE WHEN t.typname = 'bytea' THEN 'b' WHEN t.typcategory = 'S' THEN 's'
                      ELSE 'o' END ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
GROUP BY n.nspname, c.relname, c.oid
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


def check_not_source(
    scratch: PgEndpoint, source: PgEndpoint, field: str = "scratch_conn_id"
) -> str:
    """The scratch (or standby) connection's database must be proven not to be the source.

    Decided by the servers' identity (``Databases.verdict``), never by host spelling.
    :param field: the config field that names the connection, for the messages
    :return: how it was proven
    :raises PreflightError: it is the source, or that cannot be ruled out
    """
    found = Databases(scratch, source).verdict(scratch.dbname)
    if found.is_source is False:
        if "source's server" in found.why:
            log.warning(
                "preflight: %s %r is on the source's server: restores will load it; a "
                "server of its own is safer",
                field,
                scratch.conn_id,
            )
        return found.why
    fix = (
        "point it at a scratch server, or at least another database (for example 'postgres') "
        "where pgb_verify_* databases may be created and dropped"
    )
    if found.is_source:
        raise PreflightError(
            f"{field} {scratch.conn_id!r} points at the source database "
            f"{source.describe()} ({found.why}): {fix}"
        )
    raise PreflightError(
        f"{field} {scratch.conn_id!r}: cannot prove {scratch.describe()} is not the "
        f"source database ({found.why}): let both logins read pg_control_system() "
        "(GRANT EXECUTE ON FUNCTION pg_control_system() TO <login>), or " + fix
    )


def estimate_dump_bytes(conn: Any) -> int:
    """About how many bytes pg_dump will write for the tables of the connected database.

    Uncompressed lengths (see ``_TABLES_SQL``), every table measured or sampled. A table the
    login cannot read is left out here (pg_dump will name it).
    """
    from psycopg import sql

    total = 0
    for schema, table, pages, columns, kinds in conn.execute(_TABLES_SQL).fetchall():
        widths = [
            sql.SQL("2 * coalesce(octet_length({}), 0)").format(sql.Identifier(col))
            if kind == "b"
            else sql.SQL("coalesce(octet_length({}::text), 0)").format(sql.Identifier(col))
            for col, kind in zip(columns, kinds, strict=True)
        ]
        rows = sql.SQL(" + ").join(widths)
        relation = sql.Identifier(schema, table)
        scale = 1.0
        if pages > SAMPLE_PAGES:
            percent = 100.0 * SAMPLE_PAGES / pages
            scale = 100.0 / percent
            query = sql.SQL(
                "SELECT coalesce(sum({}), 0) FROM {} TABLESAMPLE SYSTEM ({}) REPEATABLE (0)"
            ).format(rows, relation, sql.Literal(percent))
        else:
            query = sql.SQL("SELECT coalesce(sum({}), 0) FROM {}").format(rows, relation)
        try:
            measured = conn.execute(query).fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - an unreadable table must not stop preflight
            log.warning("preflight: cannot measure %s.%s: %s", schema, table, exc)
            continue
        total += int(float(measured) * scale)
    return total


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


_SCOPE = """n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
  AND NOT (n.nspname = ANY(%(exclude)s::text[]))"""

# Tables whose rows row-level security would hide from the backup login (not a superuser, no
# BYPASSRLS, and not the owner of a table without FORCE ROW LEVEL SECURITY).
_HIDDEN_ROWS_SQL = f"""
SELECT format('"%%s"."%%s"', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND {_SCOPE}
  AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
  AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
ORDER BY 1"""

# Objects only a superuser may create: event triggers, routines in untrusted languages.
_SUPERUSER_OBJECTS_SQL = f"""
SELECT 'event trigger', format('"%%s"', evtname) FROM pg_event_trigger
UNION ALL
SELECT 'routine in untrusted language ' || l.lanname,
       format('"%%s"."%%s"(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE NOT l.lanpltrusted AND l.lanname NOT IN ('internal', 'c') AND {_SCOPE}
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass
                  AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY 1, 2"""

# Tables with FORCE ROW LEVEL SECURITY: their restored copy hides rows from a restoring login
# without BYPASSRLS (it owns them, and FORCE applies to owners).
_FORCED_SQL = f"""
SELECT format('"%%s"."%%s"', n.nspname, c.relname) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relforcerowsecurity AND {_SCOPE} ORDER BY 1"""


def _one(conn: Any, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql  # aggregates and settings always return a row
    return tuple(row)


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


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
        self.source_identity: SourceIdentity | None = None

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        """(label, check) in the order they run; a check raises PgBackupError when it fails."""
        cfg = self.rt.cfg
        return [
            ("encryption recipients", self.recipients),
            (f"source connection {cfg.source_conn_id!r}", self.source),
            ("row-level security", self.row_security),
            ("lock budget", self.lock_budget),
            ("pg_dump and pg_restore", self.client_tools),
            (f"scratch connection {cfg.scratch_conn_id!r}", self.scratch),
            ("objects the scratch login can restore", self.restorable),
            ("scratch server holds the source's locale", self.scratch_locale),
            ("storage writable", self.storage),
            ("staging space", self.staging),
        ]

    def drill_checks(self) -> list[tuple[str, Callable[[], str]]]:
        """(label, check) for what the weekly drill needs; run by ``pg-backup check``.

        The daily preflight does not run these: the private key is read only by drills and
        restores. Run after ``checks()`` (the standby's locale check needs the source's).
        """
        cfg = self.rt.cfg
        found = [(f"drill identity connection {cfg.encryption.identity_conn_id!r}", self.identity)]
        if cfg.drill.standby_conn_id:
            found.append((f"drill standby connection {cfg.drill.standby_conn_id!r}", self.standby))
        return found

    def _source_session(self) -> Any:
        """A session on the source whose lock waits end at ``dump.lock_wait_timeout``."""
        from pg_backup.stages.dump import lock_timeout_ms

        return self.rt.source.connect(
            autocommit=True, options=session_options(lock_timeout_ms(self.rt.cfg))
        )

    def _scope(self) -> dict[str, Any]:
        dump = self.rt.cfg.dump
        return {"schemas": dump.schemas, "exclude": dump.exclude_schemas}

    def recipients(self) -> str:
        """Every public key parses."""
        return f"{len(self.rt.recipients)} recipient(s)"

    def source(self) -> str:
        """The source answers; its version, the size of its data, its encoding and locale."""
        from psycopg import errors

        with self._source_session() as conn:
            version, major = _one(
                conn,
                "SELECT current_setting('server_version'),"
                " current_setting('server_version_num')::int / 10000",
            )
            try:
                on_disk = int(_one(conn, _SIZE_SQL)[0])
            except errors.LockNotAvailable:
                raise PreflightError(
                    f"a table of {self.rt.source.describe()} stayed locked exclusively longer "
                    f"than dump.lock_wait_timeout ({self.rt.cfg.dump.lock_wait_timeout}) while "
                    "its size was read (a migration, TRUNCATE, VACUUM FULL): pg_dump would "
                    "wait the same way. Run the backup after it, or raise dump.lock_wait_timeout"
                ) from None
            self.estimated = max(on_disk, estimate_dump_bytes(conn))
            self.source_identity = source_identity(conn)
            self.locale = DatabaseLocale.from_catalog(*_one(conn, _LOCALE_SQL))
        self.server_version, self.server_major = str(version), int(major)
        return (
            f"{self.rt.source.describe()} PostgreSQL {version}, data about "
            f"{self.estimated / 1e6:,.0f} MB uncompressed ({on_disk / 1e6:,.0f} MB on disk)"
        )

    def row_security(self) -> str:
        """No table hides rows from the backup login through row-level security."""
        with self._source_session() as conn:
            hidden = [r[0] for r in conn.execute(_HIDDEN_ROWS_SQL, self._scope()).fetchall()]
        if hidden:
            user = self.rt.source.user
            raise PreflightError(
                f"row-level security hides rows of {len(hidden)} table(s) from the backup login "
                f"{user!r}: {_names(hidden)}. Counted as it sees them the backup would be "
                f"incomplete, and pg_dump refuses them: ALTER ROLE {user} BYPASSRLS (or back up "
                "with the tables' owner)"
            )
        return "no table hides rows from the backup login"

    def lock_budget(self) -> str:
        """pg_dump can lock every table at once within the server's lock table."""
        with self._source_session() as conn:
            tables, per_transaction, slots = _one(conn, LOCK_BUDGET_SQL, self._scope())
        problem = lock_budget_problem(int(tables), int(per_transaction), int(slots))
        if problem:
            raise PreflightError(problem)
        return f"{tables:,} tables to lock, room for about {per_transaction * slots:,}"

    def restorable(self) -> str:
        """Name what the scratch login may not create; fail where the restore could not finish.

        Event triggers are left out of the verification restore (and named in every
        verification); routines in untrusted languages would fail the restore.
        """
        scratch = self.rt.scratch
        with scratch.connect(autocommit=True) as conn:
            superuser, bypass = _one(
                conn, "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
        if superuser:
            return f"{scratch.user!r} is a superuser: it restores everything"
        with self._source_session() as conn:
            found = conn.execute(_SUPERUSER_OBJECTS_SQL, self._scope()).fetchall()
            forced = [r[0] for r in conn.execute(_FORCED_SQL, self._scope()).fetchall()]
        triggers = [name for kind, name in found if kind == "event trigger"]
        routines = [f"{name} ({kind})" for kind, name in found if kind != "event trigger"]
        if routines:
            raise PreflightError(
                f"the scratch login {scratch.user!r} may not create {len(routines)} routine(s) "
                f"in untrusted languages: {_names(routines)}; the verification restore would "
                "fail on them. Give scratch_conn_id a superuser login"
            )
        notes = []
        if triggers:
            notes.append(
                f"{len(triggers)} event trigger(s) not restorable by the scratch login "
                f"{scratch.user!r}: {_names(triggers)}; they are left out of the verification "
                "restore and named in every verification as not proven (a superuser scratch "
                "login restores and proves them)"
            )
        if forced and not bypass:
            notes.append(
                f"{len(forced)} table(s) with FORCE ROW LEVEL SECURITY: {_names(forced)}; the "
                f"scratch login {scratch.user!r} cannot read their restored rows, so their "
                f"counts and content are named as not proven: ALTER ROLE {scratch.user} "
                "BYPASSRLS to prove them"
            )
        for note in notes:
            log.warning("preflight: %s", note)
        return "; ".join(notes) or "nothing the scratch login cannot create"

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
        return _restore_server(self.rt.scratch, self.rt.source, "scratch_conn_id")

    def identity(self) -> str:
        """The drill's private keys parse and one of them opens what the recipients get."""
        from pg_backup.core import keys

        cfg = self.rt.cfg
        held = set(keys.public_keys(self.rt.identities))
        wanted = {str(r) for r in self.rt.recipients}
        if not held & wanted:
            raise PreflightError(
                f"none of the {len(held)} private key(s) in connection "
                f"{cfg.encryption.identity_conn_id!r} belongs to a recipient in "
                "encryption.recipients, so the drill could not decrypt new backups: put the "
                "private key of one of them (AGE-SECRET-KEY-1...) in its password field"
            )
        return f"{len(held)} private key(s), {len(held & wanted)} for a configured recipient"

    def standby(self) -> str:
        """The standby server is not the source, may create databases, holds the locale."""
        done = _restore_server(self.rt.drill_server, self.rt.source, "drill.standby_conn_id")
        if self.locale is None:
            raise PreflightError("the source's locale is unknown: its check failed first")
        return f"{done}; {self.rt.drill_databases.check_locale(self.locale)}"

    def scratch_locale(self) -> str:
        """The scratch server can create the verification database in the source's locale."""
        if self.locale is None:
            raise PreflightError("the source's locale is unknown: its check failed first")
        return self.rt.scratch_databases.check_locale(self.locale)

    def storage(self) -> str:
        """Storage answers and takes a small object (with several destinations: at least one).

        A destination that does not answer fails only its own upload task later, so it is
        named here but fails preflight only when no destination answers.
        """
        cfg = self.rt.cfg
        if not cfg.multi_destination:
            store = self.rt.storage
            store.check_writable(layout.preflight_key(cfg.name))
            return store.url
        ok, down = [], []
        for dest in cfg.destinations:
            try:
                self.rt.at(dest.name).storage.check_writable(layout.preflight_key(cfg.name))
                ok.append(dest.name)
            except PgBackupError as exc:
                down.append(f"{dest.name} ({exc.summary})")
        if not ok:
            raise PreflightError(
                f"no destination is writable: {'; '.join(down)}. Fix one of them (endpoint, "
                "credentials, mount) and clear preflight"
            )
        if down:
            log.warning("preflight: destination(s) NOT writable: %s", "; ".join(down))
        return f"writable: {', '.join(ok)}" + (f"; NOT writable: {'; '.join(down)}" if down else "")

    def staging(self) -> str:
        """Staging has room for the dump and its compressed and encrypted copies."""
        cfg = self.rt.cfg
        self.staging_free = check_free_space(cfg.staging_dir, self.estimated, cfg.staging_headroom)
        local = f"{self.staging_free / 1e9:,.1f} GB free in {cfg.staging_dir}"
        if cfg.staging_url is None:
            return local
        # Workers that share no disk hand over through the store: it must take an object.
        from pg_backup.adapters.run_staging import staging_store

        store = staging_store(cfg)
        store.check_writable(layout.preflight_key(cfg.name))
        return f"{store.url} writable; {local} for this worker's work files"


def _restore_server(server: PgEndpoint, source: PgEndpoint, field: str) -> str:
    """``server`` is proven not the source and its login may create databases.

    :param field: the config field naming the connection, for the messages
    :raises PreflightError: naming the field and the fix
    """
    proof = check_not_source(server, source, field)
    with server.connect(autocommit=True) as conn:
        can_create = conn.execute(
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if not (can_create and can_create[0]):
        raise PreflightError(
            f"{field} {server.conn_id!r}: user {server.user!r} may not create databases on "
            f"{server.describe()}: ALTER ROLE {server.user} CREATEDB, or use another login"
        )
    return f"{server.describe()} ({proof})"


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
        source=preflight.source_identity,
        locale=preflight.locale,
    )
