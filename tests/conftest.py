"""Shared fixtures: an isolated Airflow home, the real PostgreSQL, an S3 server, an SMTP sink.

Every service is real and local: PostgreSQL on 127.0.0.1:5432 (started by the machine; `make
test` makes sure it is up), moto's S3 server and aiosmtpd on free loopback ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_HOST = os.environ.get("PG_BACKUP_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PG_BACKUP_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("PG_BACKUP_TEST_PGUSER", os.environ.get("USER") or "postgres")

_HOME = Path(tempfile.mkdtemp(prefix="pgb-test-airflow-"))


def pytest_configure(config: pytest.Config) -> None:
    """Point Airflow at a throwaway home before anything imports it."""
    os.environ.update(
        {
            "AIRFLOW_HOME": str(_HOME),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME}/airflow.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PG_BACKUP_CONFIG": str(_HOME / "pg_backup.yaml"),
        }
    )


TIERS = ("unit", "dags", "integration", "e2e", "deploy", "benchmarks")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the folder it lives in (tests/<tier>/...)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile``, all of tests/e2e goes to one worker: one Airflow stack for all.

    The stack is a session fixture, so each worker that ran an e2e file would start its own
    (40 s and ~1 GB each); the e2e files share it instead, one after the other.
    """
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneStackScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = str(super()._split_scope(nodeid))
            return "tests/e2e" if scope.startswith("tests/e2e/") else scope

    return OneStackScheduling(config, log)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Block until something listens on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# --- PostgreSQL -------------------------------------------------------------------------


def pg_conn_json(dbname: str, **extra: Any) -> str:
    """An Airflow connection (JSON form) to the local test server."""
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": PG_HOST,
            "port": PG_PORT,
            "login": PG_USER,
            "schema": dbname,
            "extra": extra,
        }
    )


def psql(sql: str, dbname: str = "postgres", port: int = PG_PORT, user: str = PG_USER) -> str:
    """Run SQL through psql on the test server (or another cluster of this machine)."""
    out = subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            PG_HOST,
            "-p",
            str(port),
            "-U",
            user,
            "-d",
            dbname,
            "-Atq",
            "-c",
            sql,
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr}")
    return out.stdout.strip()


@pytest.fixture(scope="session")
def pg_server() -> None:
    """The local PostgreSQL must answer; tests fail (not skip) when it does not."""
    try:
        psql("SELECT 1")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL on {PG_HOST}:{PG_PORT} is not reachable: {exc}")


@pytest.fixture
def make_db(pg_server: None) -> Iterator[Any]:
    """Create uniquely named databases; drop them (and their scratch copies) afterwards."""
    created: list[str] = []

    def make(prefix: str = "pgbt") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        psql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return name

    yield make
    for name in created:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- S3 ---------------------------------------------------------------------------------


@dataclass
class S3Server:
    """A moto S3 server on loopback."""

    port: int
    server: Any
    endpoint: str = ""
    buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def conn_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )

    def new_bucket(self, object_lock: bool = False) -> str:
        name = f"pgbt-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        self.buckets.append(name)
        return name

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()
        wait_port(self.port)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server over real HTTP on a free port."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3 = S3Server(port=port, server=server, endpoint=f"http://127.0.0.1:{port}")
    s3.start()
    os.environ["AIRFLOW_CONN_PGB_TEST_AWS"] = s3.conn_json()
    yield s3
    server.stop()


# --- SMTP -------------------------------------------------------------------------------


class MailSink:
    """aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.original_content or envelope.content)
        message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    @staticmethod
    def text(message: Message) -> str:
        """Every text part of a message, decoded."""
        parts = message.walk() if message.is_multipart() else [message]
        return "\n".join(
            p.get_payload(decode=True).decode(p.get_content_charset() or "utf-8", "replace")
            for p in parts
            if p.get_content_maintype() == "text"
        )


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[MailSink]:
    """A real SMTP server on loopback capturing mail."""
    from aiosmtpd.controller import Controller

    sink = MailSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    os.environ["AIRFLOW_CONN_PGB_TEST_SMTP"] = json.dumps(
        {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": port,
            "extra": {
                "disable_tls": True,
                "disable_ssl": True,
                "from_email": "pgb@test.invalid",
                "retry_limit": 0,
                "timeout": 10,
            },
        }
    )
    yield sink
    controller.stop()


# --- keys and Airflow -------------------------------------------------------------------


@dataclass(frozen=True)
class AgeKeys:
    """A throwaway age key pair made for this test session."""

    public: str
    identity_file: Path

    @property
    def secret(self) -> str:
        return self.identity_file.read_text().strip()


@pytest.fixture(scope="session")
def age_keys(tmp_path_factory: pytest.TempPathFactory) -> AgeKeys:
    """Generated at run time: no private key is ever committed."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path = tmp_path_factory.mktemp("keys") / "key.txt"
    path.write_text(str(identity) + "\n")
    path.chmod(0o600)
    return AgeKeys(public=str(identity.to_public()), identity_file=path)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the throwaway SQLite metadata DB once per session."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return _HOME


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The throwaway AIRFLOW_HOME of this session."""
    return _HOME
