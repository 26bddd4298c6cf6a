"""The source password never shows: not in argv (``ps``), logs, XCom or stored objects.

A throwaway login role with a random password is the source (and scratch) login. Trust auth
accepts any password, but libpq still receives it, so every place it could leak to is real.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from pg_backup.core import layout
from pg_backup.stages.runtime import Runtime
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import RICH_SCHEMA, Harness, task_states, xcoms

TOOLS = ("pg_dump", "pg_restore")
# A sequence no table uses: pg_dump reads it (SELECT last_value ...), nothing else in the
# pipeline does (preflight sizes and snapshot counts cover tables and matviews only). Holding
# an uncommitted DROP SEQUENCE on it makes pg_dump wait, long enough to read its /proc entry.
PROBE = "pgb_probe_seq"


def admin_connect(dbname: str = "postgres", autocommit: bool = True) -> Any:
    """A superuser connection of the test harness (not the secret role)."""
    import psycopg

    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=autocommit
    )


@dataclass(frozen=True)
class SecretRole:
    """A login role whose password must never be seen."""

    name: str
    password: str

    def conn_json(self, dbname: str) -> str:
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": PG_HOST,
                "port": PG_PORT,
                "login": self.name,
                "password": self.password,
                "schema": dbname,
                "extra": {},
            }
        )


@pytest.fixture
def secret_role(pg_server: None) -> Iterator[SecretRole]:
    """Create the role through psycopg (no psql argv holds the password); drop it afterwards."""
    from psycopg import sql

    role = SecretRole(f"pgb_secret_{uuid.uuid4().hex[:8]}", "Pw" + secrets.token_urlsafe(24))
    with admin_connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(role.name), sql.Literal(role.password)
            )
        )
    yield role
    with admin_connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role.name,),
        )
        for (db,) in conn.execute(
            "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
            "WHERE r.rolname = %s",
            (role.name,),
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role.name,)
            ).fetchone()[0]
            == 0
        )


def use_secret_role(h: Harness, role: SecretRole, scratch_too: bool = False) -> Any:
    """Point the harness's source (and optionally scratch) connection at the secret role."""
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = role.conn_json(h.source_db)
    if not scratch_too:
        return h.write_config()
    scratch_id = f"pgb_scratch_{h.name}"
    os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = role.conn_json("postgres")
    return h.write_config(scratch_conn_id=scratch_id)


@dataclass
class Seen:
    """One client program as /proc showed it while it ran."""

    pid: int
    name: str
    argv: list[bytes]
    environ: list[bytes] | None  # None: not readable


@dataclass
class ChildWatcher:
    """Polls /proc for pg_dump/pg_restore descendants of this process and records them.

    ``release`` (if given) runs once the first pg_dump has been recorded: it lets a dump that
    was made to wait go on.
    """

    release: Any = None
    # Keyed by pid and argv: Debian's /usr/bin/pg_dump is a perl wrapper that execs the real
    # binary in the same process, so one pid shows several command lines in turn.
    seen: dict[tuple[int, bytes], Seen] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    released: bool = False

    def _record(self, proc: psutil.Process) -> None:
        try:
            name = proc.name()
            if name not in TOOLS:
                return
            raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            if (proc.pid, raw) in self.seen:
                return
            argv = raw.split(b"\0")
            try:
                environ: list[bytes] | None = (
                    Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
                )
            except PermissionError:
                environ = None
        except (psutil.Error, FileNotFoundError, ProcessLookupError):
            return  # it ended between listing and reading
        if argv and argv[0]:
            self.seen[(proc.pid, raw)] = Seen(proc.pid, name, argv, environ)

    def _loop(self) -> None:
        me = psutil.Process()
        deadline = time.monotonic() + 60
        while not self._stop.is_set():
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                children = []
            for proc in children:
                self._record(proc)
            if self.release and not self.released and (self.dumps() or time.monotonic() > deadline):
                self.released = True
                self.release()
            time.sleep(0.002)

    def __enter__(self) -> ChildWatcher:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)
        if self.release and not self.released:
            self.released = True
            self.release()

    def _real(self, name: str, marker: bytes) -> list[Seen]:
        # The binary itself (argv[0] is the program, not the wrapper's perl) doing the work.
        return [
            s
            for s in self.seen.values()
            if s.name == name
            and Path(s.argv[0].decode()).name == name
            and any(a.startswith(marker) for a in s.argv)
        ]

    def dumps(self) -> list[Seen]:
        """pg_dump processes that were dumping (not the ``--version`` probe)."""
        return self._real("pg_dump", b"--snapshot=")

    def restores(self) -> list[Seen]:
        """pg_restore processes that were restoring (not the ``--list`` of extensions)."""
        return self._real("pg_restore", b"--dbname=")


def hold_probe(db: str) -> Any:
    """Create the probe sequence and hold an uncommitted DROP of it; return the release call."""
    with admin_connect(db) as conn:
        conn.execute(f"CREATE SEQUENCE {PROBE}")
    locker = admin_connect(db, autocommit=False)
    locker.execute(f"DROP SEQUENCE {PROBE}")  # uncommitted: AccessExclusiveLock held

    def release() -> None:
        locker.rollback()
        locker.close()

    return release


def assert_env_carries_password(seen: Seen, role: SecretRole) -> None:
    """The child's environment holds the password exactly once: as PGPASSWORD, nowhere else."""
    if seen.environ is None:
        return  # not readable here; argv was still checked
    secret = role.password.encode()
    holding = [entry.split(b"=", 1)[0] for entry in seen.environ if secret in entry]
    assert holding == [b"PGPASSWORD"], holding
    assert f"PGUSER={role.name}".encode() in seen.environ
    assert not [e for e in seen.environ if e.startswith(b"AIRFLOW_CONN_")]


def test_pg_dump_argv_holds_no_password_while_it_runs(harness_factory, secret_role):
    """While pg_dump runs its /proc cmdline holds no password; its environ has PGPASSWORD."""
    from pg_backup.stages.dump import run_dump

    h = harness_factory(
        "file",
        schema="CREATE TABLE t (id serial, v text);"
        "INSERT INTO t (v) SELECT 'v' FROM generate_series(1, 50);",
    )
    cfg = use_secret_role(h, secret_role)
    run = h.run_info()
    release = hold_probe(h.source_db)
    box: dict[str, Any] = {}

    def dump() -> None:
        try:
            box["result"] = run_dump(Runtime(cfg, run))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            box["error"] = exc

    worker = threading.Thread(target=dump)
    with ChildWatcher() as watcher:
        worker.start()
        deadline = time.monotonic() + 60
        while not watcher.dumps() and time.monotonic() < deadline:
            time.sleep(0.01)
        dumps = watcher.dumps()
        # Still running (waiting for the probe's lock) when its /proc entry was read.
        running = bool(dumps) and psutil.pid_exists(dumps[0].pid)
        release()
        worker.join(60)

    assert dumps, watcher.seen
    assert running
    assert "error" not in box, box.get("error")
    assert box["result"].rows == 50
    assert box["result"].dump.bytes > 0
    for seen in watcher.seen.values():  # the --version probe, the wrapper, the real dump
        assert not [a for a in seen.argv if secret_role.password.encode() in a], seen.argv
    assert_env_carries_password(dumps[-1], secret_role)


def test_full_run_leaks_password_nowhere(harness_factory, secret_role, capfd, caplog, airflow_home):
    """A verified run as the secret role leaks the password to no argv, log, XCom or object."""
    h = harness_factory("file", schema=RICH_SCHEMA)
    use_secret_role(h, secret_role, scratch_too=True)
    secret = secret_role.password
    release = hold_probe(h.source_db)
    caplog.set_level(logging.DEBUG)
    capfd.readouterr()

    with ChildWatcher(release=release) as watcher:
        run = h.run()

    out, err = capfd.readouterr()
    # Task logs reach either the captured stdout (structlog) or the logging capture,
    # depending on how Airflow configured logging earlier in the session: read both.
    logged = out + err + caplog.text
    states = task_states(run)
    assert set(states.values()) == {"success"}, states

    # argv of every client program seen while it ran; their environment carried the password.
    dumps, restores = watcher.dumps(), watcher.restores()
    assert dumps, ("pg_dump was never observed dumping", watcher.seen)
    assert restores, ("pg_restore was never observed restoring", watcher.seen)
    for seen in watcher.seen.values():
        assert not [a for a in seen.argv if secret.encode() in a], (seen.name, seen.argv)
    assert_env_carries_password(dumps[-1], secret_role)
    assert_env_carries_password(restores[-1], secret_role)

    # Task logs: what the in-process runs printed, and any log file Airflow wrote.
    assert "verify done: 9 relations" in logged  # the capture does hold the task logs
    assert secret not in logged
    for path in airflow_home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path

    # XCom values, and every object in storage (manifest, verification, encrypted data).
    values = xcoms(run)
    assert {"dump", "upload", "verify"} <= set(values)
    assert secret not in json.dumps(values, default=str)
    store = h.storage()
    stored = [o.key for o in store.list("")]
    assert [k for k in stored if k.endswith(layout.MANIFEST_OBJECT)], stored
    assert [k for k in stored if k.endswith(layout.VERIFICATION_OBJECT)], stored
    for key in stored:
        assert secret.encode() not in store.get_bytes(key), key
    assert secret not in h.config_path.read_text()
