"""A second PostgreSQL server for worst-day restores: same major, another port, no app roles.

Made once per test session with Debian's ``pg_createcluster`` (a real, separate cluster: its own
data directory, roles and ``pg_hba.conf``), on a free port of 5440-5449, and dropped at the end.
Like a new managed server, it takes TCP logins with a password (scram-sha-256) only; the test
itself administers it through the Unix socket.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

PORTS = range(5440, 5450)
SOCKET_DIR = "/var/run/postgresql"


@dataclass(frozen=True)
class Cluster:
    """One running cluster: superuser ``postgres`` with ``password`` over TCP."""

    major: int
    name: str
    port: int
    password: str
    host: str = "127.0.0.1"
    user: str = "postgres"

    def env(self) -> dict[str, str]:
        """libpq's variables for the superuser over TCP (as a person restoring would set them)."""
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }

    def dsn(self, dbname: str) -> str:
        """A libpq connection string without the password (it goes in PGPASSWORD)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def conn_json(self, dbname: str) -> str:
        """An Airflow connection (JSON form) of the superuser to ``dbname``."""
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": self.host,
                "port": self.port,
                "login": self.user,
                "password": self.password,
                "schema": dbname,
            }
        )

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser through the Unix socket; return psql's unaligned output."""
        out = subprocess.run(
            ["psql", "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-h", SOCKET_DIR, "-p", str(self.port)]
            + ["-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql on cluster {self.name} failed: {out.stderr}")
        return out.stdout.strip()

    def connect(self, dbname: str, user: str | None = None, password: str | None = None) -> Any:
        """A psycopg connection over TCP (the superuser's unless ``user`` is given)."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=dbname,
            user=user or self.user,
            password=password if user else self.password,
            autocommit=True,
        )


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return not os.path.exists(f"{SOCKET_DIR}/.s.PGSQL.{port}")


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def second_cluster(pg_server: None) -> Iterator[Cluster]:
    """A fresh cluster of the local server's major version; removed when the session ends."""
    from tests.conftest import psql

    major = int(psql("SHOW server_version_num")) // 10000
    name = f"pgbt_{uuid.uuid4().hex[:8]}"
    for port in PORTS:
        if not _free(port):
            continue
        try:
            _run(
                "pg_createcluster", str(major), name, "-p", str(port), "--locale", "C.UTF-8",
                "--", "--auth-local=trust", "--auth-host=scram-sha-256",
            )  # fmt: skip
            break
        except RuntimeError:
            # Another session took the port between the check and the create: try the next.
            subprocess.run(["pg_dropcluster", str(major), name], capture_output=True)
    else:
        pytest.fail(f"no free port for a second PostgreSQL cluster in {PORTS}")
    cluster = Cluster(major, name, port, secrets.token_hex(16))
    try:
        _run("pg_ctlcluster", str(major), name, "start")
        cluster.psql(f"ALTER ROLE postgres PASSWORD '{cluster.password}'")
        yield cluster
    finally:
        subprocess.run(["pg_dropcluster", "--stop", str(major), name], capture_output=True)
