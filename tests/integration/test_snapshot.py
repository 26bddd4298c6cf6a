"""A sound snapshot: a table truncated or rewritten under it is never verified empty or old.

The race of the issue, made deterministic with a lock choreography: an application
transaction truncates (or rewrites) ``tally`` and keeps its lock; the dump exports its
snapshot; pg_dump queues for ``tally``; only then does the application commit. pg_dump and the
counts would then read the new storage, empty to the snapshot. The dump must notice, take a new
snapshot, and record the 1,000 rows.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pg_backup.core.errors import DumpError, PreflightError
from tests.conftest import AgeKeys
from tests.integration.proofkit import dump, endpoint, sql

SCHEMA = """
CREATE TABLE tally (id int PRIMARY KEY, votes int);
INSERT INTO tally SELECT g, g FROM generate_series(1, 1000) g;
CREATE TABLE ballots (id bigint PRIMARY KEY, body text);
INSERT INTO ballots SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 150000) g;
"""

REBUILD = "TRUNCATE tally; INSERT INTO tally SELECT g, g * {n} FROM generate_series(1, 1000) g"
REWRITE = "ALTER TABLE tally ALTER votes TYPE {type}"

WAITING_FOR_TALLY = """
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name LIKE 'pg_backup dump %' AND NOT l.granted
  AND l.relation = 'tally'::regclass"""


@pytest.fixture
def source(pg_server: None) -> Iterator[str]:
    name = f"pgbt_race_{uuid.uuid4().hex[:8]}"
    sql(f'CREATE DATABASE "{name}"')
    sql(SCHEMA, name)
    yield name
    sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_background(work: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_until(query: str, db: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sql(query, db) != "0":
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


def _race(source: str, tmp_path: Any, recipient: str, change: str) -> Any:
    """One dump whose snapshot is raced by ``change``, committed while pg_dump queues for it."""
    app = endpoint(source).connect()  # a transaction, like the application's rebuild job
    try:
        app.execute(change)  # holds ACCESS EXCLUSIVE on tally until the commit below
        thread, out = _in_background(lambda: dump(source, tmp_path, recipient))
        _wait_until(WAITING_FOR_TALLY, source)  # snapshot exported, pg_dump queued on tally
        app.commit()
    finally:
        app.close()
    thread.join(120)
    assert not thread.is_alive(), "the dump did not finish"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _tally(doc: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in doc["relations"] if r["name"] == "tally")


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_truncate_racing_the_snapshot_is_never_verified_empty(
    source: str, tmp_path: Any, age_keys: AgeKeys, caplog: pytest.LogCaptureFixture, round_: int
) -> None:
    """TRUNCATE + refill committed inside the window: detected, dump retaken, 1,000 rows proven."""
    caplog.set_level(logging.WARNING, logger="pg_backup")
    dumped = _race(source, tmp_path, age_keys.public, REBUILD.format(n=round_ + 1))
    assert any("changed storage under the snapshot" in r.message for r in caplog.records), (
        "the race was not hit: the choreography must put the commit inside the window"
    )
    tally = _tally(dumped.doc)
    assert tally["rows"] == 1000
    with dumped.restored() as restored:
        assert sql("SELECT sum(votes) FROM tally", restored.dbname) == str(
            sum(g * (round_ + 1) for g in range(1, 1001))
        )
        proof = dumped.prove(restored)
        assert proof.ok, proof.report()


@pytest.mark.parametrize("new_type", ["bigint", "numeric"])
def test_rewrite_racing_the_snapshot_is_never_verified_old(
    source: str, tmp_path: Any, age_keys: AgeKeys, caplog: pytest.LogCaptureFixture, new_type: str
) -> None:
    """ALTER TABLE ... TYPE inside the window: detected; the set has the rows and the new type."""
    caplog.set_level(logging.WARNING, logger="pg_backup")
    dumped = _race(source, tmp_path, age_keys.public, REWRITE.format(type=new_type))
    assert any("changed storage under the snapshot" in r.message for r in caplog.records)
    assert _tally(dumped.doc)["rows"] == 1000
    assert dumped.doc["inventory"]["column"]['"public"."tally"."votes"'] == new_type
    with dumped.restored() as restored:
        assert (
            sql(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                "'tally'::regclass AND attname = 'votes'",
                restored.dbname,
            )
            == new_type
        )
        assert dumped.prove(restored).ok


def test_rebuild_every_100ms_never_verifies_empty_and_never_deadlocks(
    source: str, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """Against a rebuild job running every 100 ms: 1,000 rows proven or a failure naming tally."""
    stop = threading.Event()
    rebuilds = [0]

    def job() -> None:
        with endpoint(source).connect(autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute(REBUILD.format(n=1))
                rebuilds[0] += 1
                time.sleep(0.1)

    worker = threading.Thread(target=job, daemon=True)
    worker.start()
    started = time.monotonic()
    outcome: Any
    try:
        outcome = dump(source, tmp_path, age_keys.public)
    except DumpError as exc:
        outcome = exc
    finally:
        stop.set()
        worker.join(30)
    assert time.monotonic() - started < 90, "the dump waited like a deadlock"
    assert rebuilds[0] > 3, "the application's job kept running"
    if isinstance(outcome, DumpError):
        assert '"public"."tally"' in str(outcome) and "truncated or rewritten" in str(outcome)
    else:
        dumped = outcome
        assert _tally(dumped.doc)["rows"] == 1000
        with dumped.restored() as restored:
            assert sql("SELECT count(*) FROM tally", restored.dbname) == "1000"
            assert dumped.prove(restored).ok


def test_a_held_lock_ends_dump_and_preflight_at_lock_wait_timeout(
    source: str, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """A migration holding ACCESS EXCLUSIVE for 60 s: dump and preflight give up after ~2 s."""
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime
    from tests.integration.proofkit import target_config

    migration = endpoint(source).connect()
    try:
        migration.execute("LOCK TABLE ballots IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(DumpError) as failed:
            dump(source, tmp_path, age_keys.public, dump={"lock_wait_timeout": "2s"})
        assert time.monotonic() - started < 15
        assert "dump.lock_wait_timeout" in str(failed.value) and "ballots" in str(failed.value)
        cfg = target_config("locked", tmp_path, age_keys.public, dump={"lock_wait_timeout": "2s"})
        preflight = Preflight(Runtime(cfg, source=endpoint(source)))
        started = time.monotonic()
        with pytest.raises(PreflightError, match="dump.lock_wait_timeout"):
            preflight.source()
        assert time.monotonic() - started < 10
    finally:
        migration.rollback()
        migration.close()
