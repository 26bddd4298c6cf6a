"""PostgreSQL endpoints from Airflow connections, handed to libpq without exposing the password.

The password reaches psycopg as a keyword argument and child processes (pg_dump, pg_restore)
through their environment only, never through argv where ``ps`` would show it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pg_backup.core.errors import ConnectionConfigError, DatabaseUnreachable

if TYPE_CHECKING:
    import psycopg

# Connection extras that map to libpq settings; everything else in extras is ignored.
_LIBPQ_EXTRAS = {
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
        """``user@host:port/db`` for messages (no password)."""
        return f"{self.user}@{self.host or 'localhost'}:{self.port}/{self.dbname}"

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
            conn = psycopg.connect(**self.connect_kwargs(), **kwargs)
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
        for key, var in _LIBPQ_EXTRAS.items():
            if key in self.options:
                env[var] = str(self.options[key])
        if self.password:
            env["PGPASSWORD"] = self.password
        return {k: v for k, v in env.items() if v}

    def same_database_as(self, other: PgEndpoint) -> bool:
        """True when both name the same host, port and database (local spellings folded)."""
        return (
            _norm_host(self.host) == _norm_host(other.host)
            and self.port == other.port
            and self.dbname == other.dbname
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
    options = {k: str(v) for k, v in (extras or {}).items() if k in _LIBPQ_EXTRAS}
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
