"""What logins may see and create: row-level security on the source, event triggers on restore.

Roles are made per test with unique names (they are cluster-wide) and dropped afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pg_backup.core.errors import DumpError, PreflightError
from tests.conftest import PG_HOST, PG_PORT, AgeKeys
from tests.integration.proofkit import dump, endpoint, sql, target_config

AUDITED = r"""
CREATE TABLE ddl_log (id serial PRIMARY KEY, tag text NOT NULL);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql
    AS $$BEGIN INSERT INTO public.ddl_log (tag) VALUES (tg_tag); END$$;
CREATE EVENT TRIGGER ddl_audit ON ddl_command_end EXECUTE FUNCTION log_ddl();
COMMENT ON EVENT TRIGGER ddl_audit IS 'who changed the schema';
CREATE TABLE votes (id int PRIMARY KEY, candidate int NOT NULL);
INSERT INTO votes SELECT g, g % 5 FROM generate_series(1, 2000) g;
CREATE MATERIALIZED VIEW vote_totals AS SELECT candidate, count(*) AS n FROM votes GROUP BY 1;
"""

SECRETS = """
CREATE TABLE ballots (id int PRIMARY KEY, voter text);
INSERT INTO ballots SELECT g, 'voter ' || g FROM generate_series(1, 5) g;
ALTER TABLE ballots ENABLE ROW LEVEL SECURITY;
ALTER TABLE ballots FORCE ROW LEVEL SECURITY;
CREATE POLICY only_the_first_two ON ballots USING (id <= 2);
CREATE TABLE open_data (id int PRIMARY KEY);
INSERT INTO open_data SELECT generate_series(1, 10);
"""


@pytest.fixture
def databases(pg_server: None) -> Iterator[Any]:
    made: list[str] = []

    def make(schema: str = "", owner: str | None = None) -> str:
        name = f"pgbt_acc_{uuid.uuid4().hex[:8]}"
        sql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
        made.append(name)
        if schema:
            sql(schema, name)
        return name

    yield make
    for name in made:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def roles(databases: Any) -> Iterator[Any]:
    made: list[str] = []

    def make(attributes: str) -> str:
        name = f"pgbt_role_{uuid.uuid4().hex[:8]}"
        sql(f'CREATE ROLE "{name}" LOGIN {attributes}')
        made.append(name)
        return name

    yield make
    for name in made:
        owned = sql(f"SELECT datname FROM pg_database WHERE datdba = '{name}'::regrole")
        for db in owned.split():
            sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for db in sql("SELECT datname FROM pg_database WHERE datname LIKE 'pgbt_acc_%'").split():
            sql(f'DROP OWNED BY "{name}"', db)
        sql(f'DROP ROLE IF EXISTS "{name}"')


def _stock_restore(path: Any, db: str) -> None:
    subprocess.run(
        [
            "pg_restore",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            "postgres",
            "--no-owner",
            "--no-privileges",
            "-d",
            db,
            str(path),
        ],
        check=True,
        capture_output=True,
    )


def test_event_triggers_cannot_fire_while_the_restore_builds_the_database(
    databases: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """Stock pg_restore lets the audit trigger log the REFRESH; ours creates it last: exact."""
    source = databases(AUDITED)
    dumped = dump(source, tmp_path, age_keys.public)
    logged = next(r["rows"] for r in dumped.doc["relations"] if r["name"] == "ddl_log")
    premise = databases()
    _stock_restore(dumped.path, premise)
    assert int(sql("SELECT count(*) FROM ddl_log", premise)) > logged, "the premise: it fires"
    for _ in range(2):
        with dumped.restored() as target:
            assert sql("SELECT count(*) FROM ddl_log", target.dbname) == str(logged)
            assert sql("SELECT evtenabled FROM pg_event_trigger", target.dbname) == "O"
            assert (
                sql(
                    "SELECT obj_description(oid, 'pg_event_trigger') FROM pg_event_trigger",
                    target.dbname,
                )
                == "who changed the schema"
            )
            proof = dumped.prove(target)
            assert proof.ok, proof.report()
            assert proof.objects.not_restorable == []


def test_event_triggers_a_createdb_login_cannot_create_are_named_not_failed(
    databases: Any, roles: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """The documented CREATEDB scratch login restores the rest; the trigger is named, up front too."""
    from pg_backup.adapters.pg_restore import restore_dump
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime

    source = databases(AUDITED)
    verifier = roles("CREATEDB")
    cfg = target_config("evt", tmp_path, age_keys.public)
    preflight = Preflight(
        Runtime(cfg, source=endpoint(source), scratch=endpoint("postgres", verifier))
    )
    note = preflight.restorable()
    assert '"ddl_audit"' in note and "not restorable by the scratch login" in note
    dumped = dump(source, tmp_path, age_keys.public)
    scratch = databases(owner=verifier)
    target = endpoint(scratch, verifier)
    restore_dump(target, str(dumped.path), 2)
    assert sql("SELECT count(*) FROM pg_event_trigger", scratch) == "0"
    proof = dumped.prove(target)
    assert proof.ok, proof.report()
    assert proof.objects.not_restorable == [("event trigger", '"ddl_audit"')]
    assert {
        "what": "event trigger",
        "count": 1,
        "reason": "not restorable by the scratch login",
    } in proof.skipped()
    assert any('"ddl_audit"' in line and verifier in line for line in proof.notes())


def test_rows_hidden_by_row_level_security_fail_loudly_naming_the_table(
    databases: Any, roles: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """The README's pg_read_all_data login: preflight and dump name the table and BYPASSRLS."""
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime

    source = databases(SECRETS)
    reader = roles("")
    sql(f'GRANT pg_read_all_data TO "{reader}"')
    cfg = target_config("rls", tmp_path, age_keys.public)
    preflight = Preflight(Runtime(cfg, source=endpoint(source, reader)))
    with pytest.raises(PreflightError, match="BYPASSRLS") as refused:
        preflight.row_security()
    assert '"public"."ballots"' in str(refused.value) and "open_data" not in str(refused.value)
    with pytest.raises(DumpError, match="BYPASSRLS") as failed:
        dump(source, tmp_path, age_keys.public, login=reader)
    assert "ballots" in str(failed.value)
    # with BYPASSRLS every row is counted, never the two the policy shows
    sql(f'ALTER ROLE "{reader}" BYPASSRLS')
    assert "no table hides rows" in preflight.row_security()
    dumped = dump(source, tmp_path, age_keys.public, login=reader)
    assert next(r["rows"] for r in dumped.doc["relations"] if r["name"] == "ballots") == 5


def test_forced_rls_rows_the_scratch_login_cannot_read_are_named_not_passed(
    databases: Any, roles: Any, tmp_path: Any, age_keys: AgeKeys
) -> None:
    """A CREATEDB login owns the restored FORCE RLS table but sees 2 of 5 rows: named, not proven."""
    from pg_backup.adapters.pg_restore import restore_dump

    dumped = dump(databases(SECRETS), tmp_path, age_keys.public)
    verifier = roles("CREATEDB")
    scratch = databases(owner=verifier)
    target = endpoint(scratch, verifier)
    restore_dump(target, str(dumped.path), 2)
    proof = dumped.prove(target)
    assert proof.ok, proof.report()
    assert [label for label, _ in proof.hidden] == ['"public"."ballots"']
    assert "BYPASSRLS" in proof.hidden[0][1]
    assert any(
        item["what"] == "counts and content" and item["count"] == 1 for item in proof.skipped()
    )
    assert proof.rows.checked == 2  # open_data and the large objects, proven
