"""Preflight's pure checks and the libpq hand-off: messages that name the fix."""

from __future__ import annotations

import pytest

from pg_backup.adapters.pgconn import PgEndpoint, endpoint_from_connection
from pg_backup.stages.preflight import (
    PreflightError,
    check_free_space,
    check_not_source,
    check_pg_dump,
)


def ep(host="db.example.org", port=5432, db="voting", **kw):
    return PgEndpoint("c", host, port, "u", db, **kw)


def test_old_pg_dump_names_the_package_to_install():
    """pg_dump 15 against a 17 server fails naming postgresql-client-17 and pg_bin_dir."""
    with pytest.raises(PreflightError) as err:
        check_pg_dump(15, 17)
    assert str(err.value) == (
        "pg_dump 15 cannot dump a PostgreSQL 17 server: install postgresql-client-17 or set "
        "dump.pg_bin_dir"
    )
    check_pg_dump(17, 15)  # newer client is fine
    check_pg_dump(15, 15)


def test_scratch_spelled_like_the_source_is_refused_before_any_connection():
    """localhost, 127.0.0.1 and a socket directory spell one server: refused without asking it."""
    with pytest.raises(PreflightError, match="scratch_conn_id 'c' points at the source database"):
        check_not_source(ep("localhost"), ep("127.0.0.1"))
    with pytest.raises(PreflightError, match="same host, port and database name"):
        check_not_source(ep("/var/run/postgresql"), ep(""))
    # Other spellings are decided by the servers' identity: tests/integration/test_source_guard.py


def test_free_space_check_names_the_numbers(tmp_path):
    """Too little staging space fails with free, needed and the knob to change."""
    with pytest.raises(PreflightError) as err:
        check_free_space(str(tmp_path), 10**15, 1.2)
    assert "staging_dir" in str(err.value) and "staging_headroom" in str(err.value)
    assert check_free_space(str(tmp_path), 1, 1.2) > 0


def test_password_and_sslmode_travel_in_the_environment_only():
    """libpq gets PGPASSWORD and PGSSLMODE in the child's environment; repr hides the password."""

    class Conn:
        conn_type = "postgres"
        host = "db.example.org"
        port = 25060
        login = "backup"
        password = "s3cr3t-value"
        schema = "voting"
        extra_dejson = {"sslmode": "require", "unrelated": "x"}

    e = endpoint_from_connection(Conn(), "voting_db")
    env = e.libpq_env()
    assert env["PGPASSWORD"] == "s3cr3t-value" and env["PGSSLMODE"] == "require"
    assert env["PGHOST"] == "db.example.org" and env["PGPORT"] == "25060"
    assert "unrelated" not in str(env)
    assert "s3cr3t" not in repr(e) and "s3cr3t" not in e.describe()
    assert e.connect_kwargs()["sslmode"] == "require"


def test_connection_without_database_or_of_wrong_type_is_named():
    """A connection with no schema, or not of type postgres, fails naming the connection."""

    class Conn:
        conn_type = "postgres"
        host = "h"
        port = None
        login = "u"
        password = None
        schema = ""
        extra_dejson: dict = {}

    with pytest.raises(ValueError, match="'src'.*schema"):
        endpoint_from_connection(Conn(), "src")
    Conn.conn_type = "mysql"
    Conn.schema = "db"
    with pytest.raises(ValueError, match="'src' has conn_type 'mysql'"):
        endpoint_from_connection(Conn(), "src")
