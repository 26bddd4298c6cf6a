"""The lock budget: 5,000 small tables dump and verify at stock max_locks_per_transaction (64).

pg_dump holds a lock on every table at once, in a lock table shared by the whole server. The
counts and fingerprints must not add a second lock per table and index (the issue's 'out of
shared memory'), and a database beyond what pg_dump itself can lock fails fast, naming
max_locks_per_transaction. Both run on a PostgreSQL cluster of their own, made with stock
settings by this module (port 5460-5469) and removed afterwards, so that filling its lock
table can never disturb other sessions of the shared server.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pg_backup.core.errors import DumpError, PreflightError
from tests.conftest import AgeKeys
from tests.integration.proofkit import dump, endpoint, sql, target_config

TABLES = 5000
PORTS = range(5460, 5470)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for a test cluster")


@pytest.fixture(scope="module")
def stock_cluster(pg_server: None) -> Iterator[int]:
    """A new PostgreSQL 15 cluster with stock lock settings, trust auth on loopback; its port."""
    name = f"pgbt_locks_{uuid.uuid4().hex[:6]}"
    port = _free_port()
    # Durability off (a throwaway cluster); every lock setting stays the stock one.
    subprocess.run(
        [
            "pg_createcluster",
            "15",
            name,
            "-p",
            str(port),
            "--start",
            "-o",
            "fsync=off",
            "-o",
            "synchronous_commit=off",
            "-o",
            "full_page_writes=off",
            "--",
            "--auth=trust",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield port
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)


@pytest.fixture(scope="module")
def many_tables(stock_cluster: int) -> str:
    """A database of 5,000 small tables (a primary key and one row each)."""
    started = time.monotonic()
    db = "many_tables"
    sql(f"CREATE DATABASE {db}", port=stock_cluster, user="postgres")
    batch = 500
    for first in range(1, TABLES + 1, batch):
        sql(
            f"DO $$ BEGIN FOR i IN {first}..{first + batch - 1} LOOP EXECUTE format("
            "'CREATE TABLE t%s (id int PRIMARY KEY, v int); INSERT INTO t%s VALUES (1, %s)', i, i, i);"
            " END LOOP; END $$",
            db,
            port=stock_cluster,
            user="postgres",
        )
    print(f"\n5,000 tables created in {time.monotonic() - started:.1f} s")
    return db


def test_5000_tables_dump_and_verify_at_stock_lock_settings(
    stock_cluster: int, many_tables: str, tmp_path: Any, age_keys: AgeKeys, capsys: Any
) -> None:
    """Dump (counts + fingerprints + objects), restore and proof of 5,000 tables at 64 locks/xact."""
    settings = sql("SHOW max_locks_per_transaction", port=stock_cluster, user="postgres")
    assert settings == "64", "this test proves the stock lock budget"
    started = time.monotonic()
    dumped = dump(many_tables, tmp_path, age_keys.public, port=stock_cluster, login="postgres")
    dumped_at = time.monotonic()
    target = dumped.restore("many_tables_restored", login="postgres", port=stock_cluster)
    restored_at = time.monotonic()
    proof = dumped.prove(target)
    proved_at = time.monotonic()
    assert proof.ok, proof.report()
    assert proof.rows.checked == TABLES + 1  # and the large objects
    assert proof.rows.content_checked == TABLES + 1
    assert proof.objects is not None and proof.objects.checked >= 4 * TABLES
    with capsys.disabled():
        print(
            f"\n5,000 tables at max_locks_per_transaction 64: dump {dumped_at - started:.1f} s, "
            f"restore {restored_at - dumped_at:.1f} s, proof {proved_at - restored_at:.1f} s"
        )


def test_beyond_the_lock_table_the_dump_fails_fast_naming_the_setting(
    stock_cluster: int, many_tables: str, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """With room for 420 locks, 5,000 tables fail in seconds, before pg_dump starts, with the fix."""
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime

    for setting in ("max_locks_per_transaction = 10", "max_connections = 20"):
        sql(f"ALTER SYSTEM SET {setting}", port=stock_cluster, user="postgres")
    cluster = next(
        line.split()[1]
        for line in subprocess.run(
            ["pg_lsclusters", "-h"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if line.split()[2] == str(stock_cluster)
    )
    subprocess.run(["pg_ctlcluster", "15", cluster, "restart"], check=True, capture_output=True)
    started = time.monotonic()
    with pytest.raises(DumpError, match="max_locks_per_transaction") as failed:
        dump(many_tables, tmp_path, age_keys.public, port=stock_cluster, login="postgres")
    assert time.monotonic() - started < 20
    assert "5,000 tables" in str(failed.value) and "at least" in str(failed.value)
    assert not list(tmp_path.rglob("db.dump*")), "pg_dump must not have started"
    cfg = target_config("locks", tmp_path, age_keys.public)
    preflight = Preflight(Runtime(cfg, source=endpoint(many_tables, "postgres", stock_cluster)))
    with pytest.raises(PreflightError, match="max_locks_per_transaction"):
        preflight.lock_budget()
