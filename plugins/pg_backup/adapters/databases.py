"""Whole databases on a server: create, drop, inspect. Never the source database.

Every destructive call checks, itself, that the database it touches is not the source: no
caller can create, restore into or drop the source by forgetting a check.
"""

from __future__ import annotations

import logging

from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core.errors import SourceProtected

log = logging.getLogger(__name__)

# Relations a restore would collide with: anything in a non-system schema.
_USER_RELATIONS_SQL = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'm', 'v', 'S') AND n.nspname NOT LIKE 'pg\\_%%' "
    "AND n.nspname <> 'information_schema'"
)


class Databases:
    """Databases of one server, with the source database protected.

    :param server: a login on the server, connected to a maintenance database (e.g. postgres)
    :param source: the source database; None only where no source is known (a restore onto a
        new server with the source gone), and then nothing is protected
    """

    def __init__(self, server: PgEndpoint, source: PgEndpoint | None):
        self.server = server
        self.source = source

    def endpoint(self, name: str) -> PgEndpoint:
        """A login into database ``name`` of this server (refused for the source)."""
        self.guard(name)
        return self.server.with_db(name)

    def guard(self, name: str) -> None:
        """Raise SourceProtected when ``name`` on this server is the source database."""
        if self.source is not None and self.server.with_db(name).same_database_as(self.source):
            raise SourceProtected(
                f"refusing to create, restore into or drop {self.server.with_db(name).describe()}:"
                f" it is the source database of connection {self.source.conn_id!r}"
            )

    def exists(self, name: str) -> bool:
        """True if the database exists."""
        with self.server.connect(autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None

    def user_relations(self, name: str) -> int:
        """How many tables, views and sequences the database holds outside system schemas."""
        with self.server.with_db(name).connect(autocommit=True) as conn:
            row = conn.execute(_USER_RELATIONS_SQL).fetchone()
        return int(row[0]) if row else 0

    def create(self, name: str, encoding: str = "UTF8") -> PgEndpoint:
        """(Re)create an empty database; a retried task gets a clean one, never a twin."""
        from psycopg import sql

        self.guard(name)
        ident = sql.Identifier(name)
        with self.server.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            # template0 + C locale accept any encoding, so the source's encoding always works.
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C'"
                ).format(ident, sql.Literal(encoding))
            )
        log.info("created database %s on %s", name, self.server.describe())
        return self.server.with_db(name)

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
