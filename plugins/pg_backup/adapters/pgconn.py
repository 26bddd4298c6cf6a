"""PostgreSQL endpoints from Airflow connections, handed to libpq without exposing the password.

The password reaches psycopg as a keyword argument and child processes (pg_dump, pg_restore)
through their environment only, never through argv where ``ps`` would show it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pg_backup.core.errors import ConnectionConfigError, DatabaseUnreachable
from pg_backup.core.identity import TargetFacts
from pg_backup.core.manifest import SourceIdentity
from pg_backup.core.redact import redact

if TYPE_CHECKING:
    import psycopg

# Connection extras that map to libpq settings; everything else in extras is ignored.
LIBPQ_EXTRAS = {
    # The address to connect to while ``host`` stays the name (for TLS and .pgpass).
    "hostaddr": "PGHOSTADDR",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "application_name": "PGAPPNAME",
}
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class PgEndpoint:
    """Where a database is and how to log in; ``repr`` never shows the password."""

    conn_id: str
    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``user@host:port/db`` for messages (no password; a pasted URI in a field redacted)."""
        return redact(f"{self.user}@{self.host or 'localhost'}:{self.port}/{self.dbname}")

    def with_db(self, dbname: str) -> PgEndpoint:
        """The same server, another database."""
        return replace(self, dbname=dbname)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect."""
        kwargs: dict[str, Any] = {
            "host": self.host or None,
            "port": self.port,
            "user": self.user or None,
            "dbname": self.dbname,
            "password": self.password,
            "connect_timeout": int(self.options.get("connect_timeout", 15)),
            "application_name": "pg_backup",
        }
        kwargs.update({k: v for k, v in self.options.items() if k != "connect_timeout"})
        return {k: v for k, v in kwargs.items() if v is not None}

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """Open a psycopg connection."""
        import psycopg

        try:
            conn = psycopg.connect(**{**self.connect_kwargs(), **kwargs})
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(
                f"cannot connect to PostgreSQL {self.describe()} (connection {self.conn_id!r}): "
                f"{_first_line(exc)}"
            ) from None
        # A database's own timeouts (ALTER DATABASE ... SET statement_timeout, common on
        # managed services, and applied to every restored database) must not cut a count short
        # or end the session holding the dump's snapshot: like pg_dump's and pg_restore's,
        # pg_backup's sessions run without them.
        session = "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0"
        if conn.info.parameter_status("server_encoding") == "SQL_ASCII":
            # A SQL_ASCII database holds bytes of no known encoding, which psycopg hands over as
            # bytes. LATIN1 maps each byte to one character and back: names and text survive
            # the round trip exactly (the server converts nothing for a SQL_ASCII database).
            session += "; SET client_encoding TO 'LATIN1'"
        conn.execute(session)
        if not conn.autocommit:
            conn.commit()
        return conn

    def libpq_env(self) -> dict[str, str]:
        """Environment for a child process: libpq reads the password from here, not argv."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGAPPNAME": "pg_backup",
        }
        for key, var in LIBPQ_EXTRAS.items():
            if key in self.options:
                env[var] = str(self.options[key])
        if self.password:
            env["PGPASSWORD"] = self.password
        return {k: v for k, v in env.items() if v}

    def same_database_as(self, other: PgEndpoint) -> bool:
        """True when both *spell* the same host, port and database (local spellings folded).

        A match proves sameness; a mismatch proves nothing (aliases, ``hostaddr``, forwards):
        ``Databases.guard`` asks the servers themselves (``core.identity``).
        """
        return (
            _norm_host(self.host) == _norm_host(other.host)
            and self.port == other.port
            and self.dbname == other.dbname
        )


_SYSTEM_IDENTIFIER_SQL = "SELECT system_identifier::text FROM pg_control_system()"
_THIS_DATABASE_SQL = (
    "SELECT current_setting('port')::int, current_database(),"
    " (SELECT oid::bigint FROM pg_database WHERE datname = current_database())"
)
# Every login sees every session's application_name and datid in pg_stat_activity; the second
# column says whether this listing shows this very session (else a miss proves nothing).
_PROBE_SQL = (
    "SELECT count(*) FILTER (WHERE application_name = %s),"
    " count(*) FILTER (WHERE pid = pg_backend_pid()"
    "                  AND application_name = current_setting('application_name'))"
    " FROM pg_stat_activity"
)


def system_identifier(conn: Any) -> str | None:
    """The cluster's system identifier, or None when this login may not call the function.

    PostgreSQL grants EXECUTE on ``pg_control_system()`` to PUBLIC by default; some managed
    services revoke it. Needs an autocommit connection (a refusal must not abort a transaction).
    """
    import psycopg

    try:
        row = conn.execute(_SYSTEM_IDENTIFIER_SQL).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
        return None
    return str(row[0]) if row and row[0] is not None else None


def source_identity(conn: Any) -> SourceIdentity:
    """The identity of the database ``conn`` is connected to (autocommit connection)."""
    row = conn.execute(_THIS_DATABASE_SQL).fetchone()
    assert row is not None  # a SELECT without FROM always returns its row
    port, database, oid = row
    return SourceIdentity(
        system_identifier=system_identifier(conn),
        port=int(port),
        database=str(database),
        database_oid=int(oid),
    )


@contextmanager
def probe_session(source: PgEndpoint) -> Iterator[tuple[SourceIdentity, str]]:
    """Hold a source session under a unique application_name; yield its identity and name.

    :raises DatabaseUnreachable: the source does not answer
    """
    nonce = f"pg_backup probe {uuid.uuid4().hex}"
    with source.connect(autocommit=True, application_name=nonce) as conn:
        yield source_identity(conn), nonce


def target_facts(server_conn: Any, database: str, probe: str | None) -> TargetFacts:
    """What the server behind ``server_conn`` says about itself and about ``database``.

    :param probe: the application_name of a live source session to look for (None: no probe)
    """
    port = int(server_conn.execute("SELECT current_setting('port')::int").fetchone()[0])
    row = server_conn.execute(
        "SELECT oid::bigint FROM pg_database WHERE datname = %s", (database,)
    ).fetchone()
    seen: bool | None = None
    if probe is not None:
        found, self_listed = server_conn.execute(_PROBE_SQL, (probe,)).fetchone()
        seen = True if found else (False if self_listed else None)
    return TargetFacts(
        system_identifier=system_identifier(server_conn),
        port=port,
        database=database,
        database_oid=int(row[0]) if row else None,
        probe_seen=seen,
    )


def _norm_host(host: str) -> str:
    host = (host or "").lower()
    return "localhost" if host in _LOCAL_HOSTS or host.startswith("/") else host


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def endpoint_from_connection(conn: Any, conn_id: str | None = None) -> PgEndpoint:
    """Build an endpoint from an Airflow ``Connection``-like object."""
    cid = conn_id or getattr(conn, "conn_id", None) or "?"
    conn_type = (getattr(conn, "conn_type", None) or "").lower()
    if conn_type and conn_type not in {"postgres", "postgresql"}:
        raise ConnectionConfigError(
            f"connection {cid!r} has conn_type {conn_type!r}: pg_backup needs a 'postgres' "
            "connection"
        )
    extras = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    options = {k: str(v) for k, v in (extras or {}).items() if k in LIBPQ_EXTRAS}
    dbname = conn.schema or (extras or {}).get("dbname") or ""
    if not dbname:
        raise ConnectionConfigError(
            f"connection {cid!r} names no database: set its 'schema' (database) field"
        )
    try:
        port = int(conn.port or 5432)
    except (TypeError, ValueError):
        raise ConnectionConfigError(f"connection {cid!r} has a bad port {conn.port!r}") from None
    return PgEndpoint(
        conn_id=cid,
        host=conn.host or "",
        port=port,
        user=conn.login or os.environ.get("USER", ""),
        dbname=dbname,
        password=conn.password or None,
        options=options,
    )


def get_connection(conn_id: str) -> Any:
    """Look a connection up through Airflow (env vars, secrets backend, or the API server)."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:
        if type(exc).__name__ == "AirflowNotFoundException":
            raise ConnectionConfigError(
                f"Airflow connection {conn_id!r} is not defined: add it in Admin > Connections, "
                f"as AIRFLOW_CONN_{conn_id.upper()} or in your secrets backend"
            ) from None
        raise


def endpoint(conn_id: str) -> PgEndpoint:
    """Resolve an Airflow connection id to a PostgreSQL endpoint (at task run time only)."""
    return endpoint_from_connection(get_connection(conn_id), conn_id)
