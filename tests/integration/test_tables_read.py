"""The restore stage reads the tables while pg_restore builds indexes; the proof takes them.

Real dumps of real databases, restored by the real stages. An index whose IMMUTABLE expression
sleeps makes the post-data section last long enough to see what the reading finds while it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import AgeKeys
from tests.integration.proofkit import Dumped, dump, endpoint, sql

ROWS = 200
# 5 ms a row: the index on "slow" takes about 1 s to build.
SLOW_INDEX = f"""
CREATE FUNCTION slow_id(int) RETURNS int LANGUAGE plpgsql IMMUTABLE
    AS $$BEGIN PERFORM pg_sleep(0.005); RETURN $1; END$$;
CREATE TABLE slow (id int PRIMARY KEY, note text);
INSERT INTO slow SELECT g, repeat('n', g % 50) FROM generate_series(1, {ROWS}) g;
CREATE INDEX slow_expr_idx ON slow (slow_id(id));
CREATE TABLE quick (id int PRIMARY KEY, slow_id int REFERENCES slow);
INSERT INTO quick SELECT g, g FROM generate_series(1, 50) g;
"""

MATVIEW = """
CREATE TABLE votes (id int PRIMARY KEY, candidate int NOT NULL);
INSERT INTO votes SELECT g, g % 5 FROM generate_series(1, 500) g;
CREATE MATERIALIZED VIEW totals AS SELECT candidate, count(*) AS n FROM votes GROUP BY 1;
"""

FORCED_RLS = """
CREATE TABLE ballots (id int PRIMARY KEY, voter text);
INSERT INTO ballots SELECT g, 'voter ' || g FROM generate_series(1, 5) g;
ALTER TABLE ballots ENABLE ROW LEVEL SECURITY;
ALTER TABLE ballots FORCE ROW LEVEL SECURITY;
CREATE POLICY only_the_first_two ON ballots USING (id <= 2);
"""


@pytest.fixture
def databases(pg_server: None) -> Iterator[Any]:
    made: list[str] = []

    def make(schema: str) -> str:
        name = f"pgbt_read_{uuid.uuid4().hex[:8]}"
        sql(f'CREATE DATABASE "{name}"')
        made.append(name)
        sql(schema, name)
        return name

    yield make
    for name in made:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stage_restore(dumped: Dumped) -> Any:
    """The restore stage's own setup and restore into ``pgb_verify_<backup id>``."""
    from pg_backup.stages.restore import create_scratch_db, restore_staged

    name = create_scratch_db(dumped.rt, dumped.result)
    return restore_staged(dumped.rt, dumped.result, name)


def test_tables_are_read_with_all_their_rows_while_the_indexes_are_built(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """The reading starts after the data and the keys, and before the slow index exists."""
    from pg_backup.adapters.pg_restore import restore_dump

    dumped = dump(databases(SLOW_INDEX), tmp_path, age_keys.public)
    scratch = databases("")
    seen: list[tuple[str, str]] = []

    def while_indexing() -> None:
        rows = sql("SELECT count(*) FROM slow", scratch)
        index = sql("SELECT count(*) FROM pg_class WHERE relname = 'slow_expr_idx'", scratch)
        key = sql("SELECT count(*) FROM pg_constraint WHERE conname = 'slow_pkey'", scratch)
        seen.append((rows, index, key))

    restore_dump(endpoint(scratch), str(dumped.path), 2, while_indexing=while_indexing)
    # rows loaded and the key made (it locks readers out), the index still being built
    assert seen == [(str(ROWS), "0", "1")]
    assert sql("SELECT count(*) FROM pg_class WHERE relname = 'slow_expr_idx'", scratch) == "1"
    assert sql("SELECT count(*) FROM pg_constraint WHERE conname = 'quick_slow_id_fkey'", scratch)
    assert dumped.prove(endpoint(scratch)).ok


def test_the_restore_stage_stages_the_tables_and_verify_takes_them(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """The nightly path: restored, read during indexing, verified; the note names each table."""
    from pg_backup.core import layout
    from pg_backup.core.counts import TablesRead
    from pg_backup.stages.restore import drop_scratch_db
    from pg_backup.stages.verify import verify_restore

    dumped = dump(databases(SLOW_INDEX), tmp_path, age_keys.public)
    try:
        restored = stage_restore(dumped)
        assert restored.tables_read == 2
        note = dumped.rt.staging.read_note(layout.TABLES_READ_NOTE)
        read = TablesRead.model_validate_json(note)
        expected = {(r["schema"], r["name"]): r for r in dumped.doc["relations"]}
        for table in read.tables:
            recorded = expected[(table.table_schema, table.table_name)]
            assert (table.rows, table.fingerprint) == (recorded["rows"], recorded["fingerprint"])
        record = verify_restore(dumped.rt, dumped.result, restored)
        assert record.status == "verified"
        assert record.content_checked == 3  # both tables and the large objects
    finally:
        drop_scratch_db(dumped.rt)


def test_the_proof_takes_a_table_as_read_only_from_the_same_storage(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """A wrong reading is believed while the storage is the one read, and re-read once it is not.

    The first proof fails naming the table: the proof took the reading, it did not scan again.
    After VACUUM FULL (new storage) and in another database (other oid) it scans and passes.
    """
    from pg_backup.adapters.pg_restore import restore_dump
    from pg_backup.stages.verify import prove_database, read_tables

    dumped = dump(databases(SLOW_INDEX), tmp_path, age_keys.public)
    scratch = databases("")
    target = endpoint(scratch)
    restore_dump(target, str(dumped.path), 2)
    read = read_tables(target, dumped.doc, dumped.rt.cfg)
    wrong = read.model_copy(
        update={
            "tables": [
                t.model_copy(update={"fingerprint": "1"}) if t.table_name == "quick" else t
                for t in read.tables
            ]
        }
    )
    believed = prove_database(target, dumped.doc, dumped.rt.cfg, wrong)
    assert not believed.ok
    assert [d.label for d in believed.rows.differences] == ['"public"."quick"']
    other = wrong.model_copy(update={"database_oid": wrong.database_oid + 1})
    assert prove_database(target, dumped.doc, dumped.rt.cfg, other).ok
    sql("VACUUM FULL quick", scratch)
    assert prove_database(target, dumped.doc, dumped.rt.cfg, wrong).ok


def test_a_dump_that_refreshes_a_materialized_view_is_read_after_the_restore(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """A refresh may run code that writes: nothing is read early, the proof reads it all."""
    from pg_backup.core import layout
    from pg_backup.stages.restore import drop_scratch_db
    from pg_backup.stages.verify import verify_restore

    dumped = dump(databases(MATVIEW), tmp_path, age_keys.public)
    try:
        restored = stage_restore(dumped)
        assert restored.tables_read == 0
        assert dumped.rt.staging.read_note(layout.TABLES_READ_NOTE) is None
        record = verify_restore(dumped.rt, dumped.result, restored)
        assert record.status == "verified" and record.content_checked == 3
    finally:
        drop_scratch_db(dumped.rt)


def test_a_forced_row_security_table_is_read_whole_before_its_policy_is_restored(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """Row security is enabled after the reading: all 5 rows are proven, and the policy after."""
    from pg_backup.stages.restore import drop_scratch_db
    from pg_backup.stages.verify import verify_restore

    dumped = dump(databases(FORCED_RLS), tmp_path, age_keys.public)
    try:
        restored = stage_restore(dumped)
        assert restored.tables_read == 1
        record = verify_restore(dumped.rt, dumped.result, restored)
        assert record.status == "verified", record
        assert record.rows_checked == 5 and record.skipped == []
        assert (
            sql(
                "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class "
                "WHERE relname = 'ballots'",
                restored.database,
            )
            == "t"
        )
    finally:
        drop_scratch_db(dumped.rt)


def test_a_restore_that_fails_beside_the_reading_fails_with_pg_restores_messages(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """An index that cannot be built fails the restore, though the reading beside it succeeded."""
    from pg_backup.adapters.pg_restore import restore_dump
    from pg_backup.core.errors import ToolFailed

    dumped = dump(databases(SLOW_INDEX), tmp_path, age_keys.public)
    scratch = databases("CREATE TABLE slow_expr_idx (id int)")  # the index's name is taken
    called: list[bool] = []
    with pytest.raises(ToolFailed, match="slow_expr_idx"):
        restore_dump(
            endpoint(scratch), str(dumped.path), 2, while_indexing=lambda: called.append(True)
        )
    assert called == [True]
