"""Whole databases on a server: create, drop, inspect. Never the source database.

Every destructive call checks, itself, that the database it touches is not the source: no
caller can create, restore into or drop the source by forgetting a check. "Is this the
source?" is asked of the servers (``core.identity``), never of a host name's spelling; what
cannot be proven is refused when a database of that name exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pg_backup.adapters.pgconn import PgEndpoint, probe_session, target_facts
from pg_backup.core.dbprops import (
    DatabaseGlobals,
    DatabaseLocale,
)
from pg_backup.core.dbsql import (
    check_target_server,
    create_database_sql,
    database_owner_sql,
    database_settings_sql,
    ident,
    locale_error,
    missing_locale,
    probe_locale_sql,
    role_in_database_sql,
    split_setting,
)
from pg_backup.core.errors import DatabaseUnreachable, SourceProtected
from pg_backup.core.identity import Verdict, judge
from pg_backup.core.manifest import SourceIdentity

log = logging.getLogger(__name__)

# Relations a restore would collide with: anything in a non-system schema.
_USER_RELATIONS_SQL = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm', 'v', 'S') AND n.nspname NOT LIKE 'pg\\_%%' "
    "AND n.nspname <> 'information_schema'"
)

_SERVER_SQL = (
    "SELECT current_setting('server_version_num')::int / 10000,"
    " EXISTS (SELECT 1 FROM pg_collation WHERE collprovider = 'i')"
)
_EXISTS_SQL = "SELECT 1 FROM pg_database WHERE datname = %s"


def _successor_name(name: str) -> str:
    """A temporary name for the database that replaces ``name`` (63 bytes at most)."""
    import hashlib

    return "pgb_new_" + hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass
class Configured:
    """What ``Databases.configure`` did: statements applied, failed (with why), skipped."""

    applied: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Databases:
    """Databases of one server, with the source database protected.

    :param server: a login on the server, connected to a maintenance database (e.g. postgres)
    :param source: the source database's connection; None where none is defined (a restore
        onto a new server with the source gone): then only ``recorded`` can tell, and a
        database that exists and cannot be told apart from the source is refused
    :param recorded: the source's identity as a set's manifest recorded it at backup time, or
        a function reading it (called only when the live source cannot tell)
    """

    def __init__(
        self,
        server: PgEndpoint,
        source: PgEndpoint | None,
        recorded: SourceIdentity | Callable[[], SourceIdentity | None] | None = None,
    ):
        self.server = server
        self.source = source
        self.recorded = recorded
        self._cleared: set[str] = set()

    def endpoint(self, name: str, recorded: SourceIdentity | None = None) -> PgEndpoint:
        """A login into database ``name`` of this server (refused for the source)."""
        self.guard(name, recorded)
        return self.server.with_db(name)

    def verdict(self, name: str, recorded: SourceIdentity | None = None) -> Verdict:
        """Whether database ``name`` of this server is the source, and how that is known.

        The live source connection is asked first (session probe, system identifier, port,
        database oid); when it is not defined or does not answer, the identity ``recorded``
        in a manifest is used.
        """
        target = self.server.with_db(name)
        if self.source is not None and target.same_database_as(self.source):
            return Verdict(True, "the same host, port and database name")
        with self.server.connect(autocommit=True) as conn:
            facts = target_facts(conn, name, None)
        if facts.database_oid is None:  # nothing there to destroy: no need to ask the source
            return judge(None, facts, live=True)
        unreachable = ""
        if self.source is not None:
            try:
                with (
                    probe_session(self.source) as (live, probe),
                    self.server.connect(autocommit=True) as conn,
                ):
                    return judge(live, target_facts(conn, name, probe), live=True)
            except DatabaseUnreachable as exc:
                unreachable = f"the source connection {self.source.conn_id!r} does not answer"
                log.warning("source guard: %s", exc.summary)
        if recorded is None:
            recorded = self.recorded() if callable(self.recorded) else self.recorded
        if recorded is None:
            why = unreachable or "no source connection is defined"
            return Verdict(None, f"{why}, and the set records no source identity")
        found = judge(recorded, facts, live=False)
        return Verdict(found.is_source, "; ".join(filter(None, [found.why, unreachable])))

    def guard(self, name: str, recorded: SourceIdentity | None = None) -> None:
        """Raise SourceProtected unless ``name`` on this server is proven not to be the source.

        A database that does not exist yet is never the source. One that exists must be proven
        another database: by the live source connection, or by the identity ``recorded`` in a
        set's manifest when the source is not reachable.
        """
        if name in self._cleared:
            return
        where = self.server.with_db(name).describe()
        found = self.verdict(name, recorded)
        if found.is_source is False:
            log.info("source guard: %s is not the source: %s", where, found.why)
            self._cleared.add(name)
            return
        source = f"connection {self.source.conn_id!r}" if self.source else "the backed-up database"
        if found.is_source:
            raise SourceProtected(
                f"refusing to create, restore into or drop {where}: it is the source database "
                f"of {source} ({found.why}). Choose another database or server"
            )
        raise SourceProtected(
            f"refusing to create, restore into or drop {where}: it exists and cannot be proven "
            f"not to be the source database ({found.why}). Restore into a database that does "
            "not exist yet, make the source connection reachable, or let the logins read "
            "pg_control_system() (GRANT EXECUTE ON FUNCTION pg_control_system() TO <login>)"
        )

    def exists(self, name: str) -> bool:
        """True if the database exists."""
        with self.server.connect(autocommit=True) as conn:
            row = conn.execute(_EXISTS_SQL, (name,)).fetchone()
        return row is not None

    def user_relations(self, name: str) -> int:
        """How many tables, views and sequences the database holds outside system schemas."""
        with self.server.with_db(name).connect(autocommit=True) as conn:
            row = conn.execute(_USER_RELATIONS_SQL).fetchone()
        return int(row[0]) if row else 0

    def create(self, name: str, locale: DatabaseLocale | str = "UTF8") -> PgEndpoint:
        """(Re)create an empty database; a retried task gets a clean one, never a twin.

        :param locale: the source's encoding and locale, recreated exactly; a bare encoding
            (sets written before the locale was recorded) gets the C locale, which any encoding
            accepts
        :raises RestoreError: the server cannot hold the source's locale or encoding; raised
            before anything is dropped or created, naming what is missing and how to get it
        """
        from psycopg import errors

        self.guard(name)
        if isinstance(locale, str):
            locale = DatabaseLocale(encoding=locale, collate="C", ctype="C")
        server = self.server.describe()
        with self.server.connect(autocommit=True) as conn:
            major, has_icu = conn.execute(_SERVER_SQL).fetchone() or (0, False)
            check_target_server(locale, server, int(major), bool(has_icu))
            exists = conn.execute(_EXISTS_SQL, (name,)).fetchone() is not None
            # An existing database is dropped only once its successor exists: a server that
            # cannot hold the locale must not cost the database that is there.
            fresh = _successor_name(name) if exists else name
            # (Also what a call killed between its drop and its rename left behind.)
            conn.execute(f"DROP DATABASE IF EXISTS {ident(_successor_name(name))} WITH (FORCE)")
            try:
                conn.execute(create_database_sql(fresh, locale))
            except (
                errors.InvalidParameterValue,
                errors.WrongObjectType,
                errors.UndefinedObject,
            ) as exc:
                raise locale_error(locale, server, str(exc)) from None
            if exists:
                conn.execute(f"DROP DATABASE {ident(name)} WITH (FORCE)")
                conn.execute(f"ALTER DATABASE {ident(fresh)} RENAME TO {ident(name)}")
        log.info("created database %s on %s (%s)", name, server, locale.describe())
        return self.server.with_db(name)

    def check_locale(self, locale: DatabaseLocale) -> str:
        """Prove, creating nothing, that this server can make a database in ``locale``.

        The server's version and ICU build are checked, and its operating system's libc
        locales loaded into a temporary collation that is rolled back. An error that does not
        name a missing locale (an encoding the maintenance database does not share) proves
        nothing either way: ``create`` decides then.

        :raises RestoreError: naming the missing piece and how to get it
        """
        from psycopg import Error

        server = self.server.describe()
        with self.server.connect(autocommit=True) as conn:
            major, has_icu = conn.execute(_SERVER_SQL).fetchone() or (0, False)
            check_target_server(locale, server, int(major), bool(has_icu))
            probe = probe_locale_sql(locale)
            if probe is not None:
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute(probe)
                except Error as exc:
                    if missing_locale(str(exc)):
                        raise locale_error(locale, server, str(exc)) from None
        return locale.describe()

    def configure(
        self, name: str, doc: DatabaseGlobals, with_roles: bool, created: list[str] | None = None
    ) -> Configured:
        """Give a restored database the source's settings and comment (and owner and grants).

        With roles, also its owner, its grants, and the settings in it of the roles this restore
        ``created``. Each statement stands alone: one the login may not run (a setting only a
        superuser may make) is reported in ``failed``, the others still apply.
        """
        from psycopg import Error

        self.guard(name)
        db_sql = ident(name)
        done = Configured()
        statements = database_settings_sql(db_sql, doc)
        if with_roles:
            statements = database_owner_sql(db_sql, doc) + statements
            for rs in doc.role_settings:
                for item in rs.settings:
                    if rs.role in (created or []):
                        statements.append(role_in_database_sql(rs.role, db_sql, item))
                    else:
                        done.skipped.append(
                            f"setting {split_setting(item)[0]} of role {rs.role} in the "
                            "database (the role existed before: left as it is)"
                        )
        with self.server.connect(autocommit=True) as conn:
            for sql in statements:
                try:
                    conn.execute(sql)
                    done.applied += 1
                except Error as exc:
                    done.failed.append(f"{sql}: {str(exc).strip().splitlines()[0]}")
        return done

    def drop(self, name: str) -> bool:
        """Drop a database if it exists (WITH FORCE ends sessions left by a killed restore)."""
        from psycopg import sql

        self.guard(name)
        existed = self.exists(name)
        with self.server.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        return existed


def database_size(target: PgEndpoint) -> int:
    """Bytes the database holds so far (the progress measure of a restore)."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0
