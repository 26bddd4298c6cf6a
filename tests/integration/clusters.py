"""A second PostgreSQL cluster of our own: another server (another system identifier) for tests.

Made with Debian's ``pg_createcluster`` on a free port of 5450-5459, with password
(scram-sha-256) authentication over TCP, so that a wrong password is really refused; removed
with ``pg_dropcluster`` afterwards. The shared cluster on 5432 is never reconfigured.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PORTS = range(5450, 5460)
VERSION = "15"
_LOCK = Path("/tmp/pg_backup-test-clusters.lock")


@dataclass(frozen=True)
class Cluster:
    """A running cluster: ``root`` is a superuser with ``password``."""

    name: str
    port: int
    password: str

    def connect(self, dbname: str = "postgres", user: str = "root", password: str | None = None):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password or self.password,
            dbname=dbname,
            autocommit=True,
        )

    def sql(self, statement: str, dbname: str = "postgres", params: Any = None) -> list[Any]:
        with self.connect(dbname) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def conn_json(self, dbname: str, login: str = "root", password: str | None = None) -> str:
        """An Airflow postgres connection (JSON form) to this cluster."""
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": self.port,
                "login": login,
                "password": password or self.password,
                "schema": dbname,
                "extra": {},
            }
        )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _used_ports() -> set[int]:
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    return {int(line.split()[2]) for line in out.splitlines() if line.split()}


@contextmanager
def second_cluster() -> Iterator[Cluster]:
    """Create, start and yield a cluster on a free port of PORTS; drop it afterwards."""
    name = f"pgbt2_{uuid.uuid4().hex[:8]}"
    password = "Pw-" + secrets.token_urlsafe(18)
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers pick ports one at a time
        used = _used_ports()
        port = next((p for p in PORTS if p not in used and _port_free(p)), None)
        if port is None:
            raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a cluster")
        subprocess.run(
            ["pg_createcluster", VERSION, name, "-p", str(port)], check=True, capture_output=True
        )
    try:
        subprocess.run(["pg_ctlcluster", VERSION, name, "start"], check=True, capture_output=True)
        # Through stdin: a password never goes on a command line, even a throwaway one.
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-p", str(port)],
            input=f"CREATE ROLE root SUPERUSER LOGIN PASSWORD '{password}';\n",
            text=True,
            check=True,
            capture_output=True,
        )
        yield Cluster(name=name, port=port, password=password)
    finally:
        subprocess.run(["pg_dropcluster", "--stop", VERSION, name], capture_output=True)
