"""Verified is a proof: rows, content and objects of a restore, compared with the snapshot.

One source with every column type the schemas use, dumped once by the real dump stage; each
test restores that dump into a database of its own, changes it (or not) and proves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import AgeKeys
from tests.integration.proofkit import Dumped, dump, sql

# Every type the voting schema and the test schemas use, TOASTed values, odd settings.
TYPES_SCHEMA = r"""
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE kinds (
    id int PRIMARY KEY, j json, jb jsonb, arr int[], tarr text[], b bytea, n numeric,
    f float8, r real, ts timestamp, tstz timestamptz, iv interval, d date, ip inet, u uuid,
    ci citext, m mood, p posint, cash money, big text,
    twice bigint GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO kinds (id, j, jb, arr, tarr, b, n, f, r, ts, tstz, iv, d, ip, u, ci, m, p, cash, big)
SELECT g, ('{ "g" :  ' || g || ' }')::json, jsonb_build_object('g', g, 'l', ARRAY[g, NULL]),
    ARRAY[g, NULL, -g], ARRAY['a"b', NULL, 'c,d', ''], decode(md5(g::text), 'hex'),
    CASE WHEN g % 10 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
    CASE WHEN g % 11 = 0 THEN 'Infinity'::float8 ELSE g / 3.0 END, g / 9.0,
    TIMESTAMP '2026-03-29 01:30:00' + g * INTERVAL '37 minutes',
    TIMESTAMPTZ '2026-10-25 00:30:00+00' + g * INTERVAL '17 minutes',
    make_interval(months => g % 13, days => g % 40, secs => g / 7.0), DATE '2026-01-01' + g,
    ('10.' || g % 256 || '.0.' || g % 200 || '/32')::inet, md5(g::text)::uuid,
    'Name-' || g || '@Example.org', (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, g, g * 1.25,
    CASE WHEN g % 50 = 0 THEN (SELECT string_agg(md5(g::text || i), '') FROM
        generate_series(1, 400) i) ELSE 'short ' || g END
FROM generate_series(1, 1200) g;
CREATE UNIQUE INDEX kinds_ci_key ON kinds (ci);
ALTER TABLE kinds ADD CONSTRAINT kinds_p_small CHECK (p < 1000000) NOT VALID;
CREATE TABLE ledger (id bigserial PRIMARY KEY, kind_id int REFERENCES kinds, amount numeric(12,2));
CREATE TABLE archive (id bigint PRIMARY KEY, kind_id int, amount numeric(12,2));
INSERT INTO ledger (kind_id, amount) SELECT 1 + g % 1200, g * 0.01 FROM generate_series(1, 3000) g;
INSERT INTO archive SELECT 100000 + g, 1 + g % 1200, g * 0.02 FROM generate_series(1, 500) g;
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER ledger_stamp BEFORE UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION stamp();
CREATE VIEW happy AS SELECT id, ci FROM kinds WHERE m = 'happy';
CREATE MATERIALIZED VIEW totals AS SELECT kind_id, sum(amount) AS total FROM ledger GROUP BY 1;
ALTER TABLE ledger ENABLE ROW LEVEL SECURITY;
CREATE POLICY ledger_positive ON ledger USING (amount > 0);
CREATE TYPE f AS ENUM ('a', 'b', 'c', 'd', 'e', 'f');
"""

# The hash partitioning on an enum (ADD VALUE must commit before the value is used).
ENUM_PARTITIONS = [
    "ALTER TYPE f ADD VALUE 'x' BEFORE 'c'",
    "CREATE TABLE e (id int, k f, PRIMARY KEY (k, id)) PARTITION BY HASH (k);"
    " CREATE TABLE e0 PARTITION OF e FOR VALUES WITH (MODULUS 4, REMAINDER 0);"
    " CREATE TABLE e1 PARTITION OF e FOR VALUES WITH (MODULUS 4, REMAINDER 1);"
    " CREATE TABLE e2 PARTITION OF e FOR VALUES WITH (MODULUS 4, REMAINDER 2);"
    " CREATE TABLE e3 PARTITION OF e FOR VALUES WITH (MODULUS 4, REMAINDER 3);"
    " INSERT INTO e SELECT g, (enum_range(NULL::f))[1 + g % 7] FROM generate_series(1, 7000) g",
]

# Session defaults that change how values print, set on both databases: the proof pins its own.
ODD_SETTINGS = (
    "SET DateStyle = 'SQL, DMY'",
    "SET TimeZone = 'Pacific/Chatham'",
    "SET IntervalStyle = 'sql_standard'",
    "SET extra_float_digits = -5",
    "SET bytea_output = 'escape'",
)


def odd_settings(dbname: str) -> None:
    for setting in ODD_SETTINGS:
        sql(f'ALTER DATABASE "{dbname}" {setting}')


@pytest.fixture(scope="module")
def source(pg_server: None) -> Iterator[str]:
    name = f"pgbt_proof_{uuid.uuid4().hex[:8]}"
    sql(f'CREATE DATABASE "{name}"')
    try:
        sql(TYPES_SCHEMA, name)
        for step in ENUM_PARTITIONS:
            sql(step, name)
        odd_settings(name)
        yield name
    finally:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def dumped(source: str, tmp_path_factory: pytest.TempPathFactory, age_keys: AgeKeys) -> Dumped:
    return dump(source, tmp_path_factory.mktemp("proof"), age_keys.public)


@pytest.fixture
def restored(dumped: Dumped) -> Iterator[Any]:
    """A fresh restore of the module's dump, with odd session defaults of its own."""
    made: list[str] = []

    def make() -> Any:
        name = f"pgbt_proved_{uuid.uuid4().hex[:8]}"
        made.append(name)
        target = dumped.restore(name)
        odd_settings(name)
        return target

    yield make
    for name in made:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def labels(proof: Any) -> set[str]:
    """Every relation or object the proof names as different."""
    out = {d.label for d in proof.rows.differences}
    if proof.objects is not None:
        out |= {d.key for d in proof.objects.differences}
    return out


def test_untouched_restore_is_proven_by_rows_content_and_objects(
    dumped: Dumped, restored: Any
) -> None:
    """Every relation's rows and content and every object match; nothing is skipped."""
    proof = dumped.prove(restored())
    assert proof.ok, proof.report()
    assert proof.proven == ["counts", "content", "objects"]
    # kinds, ledger, archive, the matview, root e (its 4 leaves as one), large objects
    assert proof.rows.checked == 6
    assert proof.rows.content_checked == 6
    assert proof.skipped() == []
    assert proof.objects is not None
    assert proof.objects.checked > 60 and proof.objects.sequences_checked == 1
    categories = set(dumped.doc["inventory"])
    assert {"index", "constraint", "trigger", "policy", "sequence", "routine", "type"} <= categories
    assert '"public"."kinds"."kinds_p_small"' in dumped.doc["inventory"]["constraint"]
    assert "NOT VALID" in dumped.doc["inventory"]["constraint"]['"public"."kinds"."kinds_p_small"']


def test_fingerprint_is_the_same_under_any_session_settings(dumped: Dumped, source: str) -> None:
    """The source's fingerprint, taken under pinned settings, ignores the database's odd defaults."""
    from pg_backup.core.counts import count_relations
    from pg_backup.core.fingerprint import session_options
    from tests.integration.proofkit import endpoint

    with endpoint(source).connect(autocommit=True, options=session_options()) as conn:
        assert conn.execute("SHOW DateStyle").fetchone()[0] == "ISO, YMD"
        again = {c.key: c.fingerprint for c in count_relations(conn.cursor(), [], [])}
    with endpoint(source).connect(autocommit=True) as conn:  # the odd defaults are in force
        assert conn.execute("SHOW bytea_output").fetchone()[0] == "escape"
    recorded = {(r["schema"], r["name"]): r.get("fingerprint") for r in dumped.doc["relations"]}
    assert again == recorded


def test_one_changed_value_same_count_fails_naming_the_table(dumped: Dumped, restored: Any) -> None:
    """A jsonb value changed in one row (same row count) is a content difference of that table."""
    target = restored()
    sql("UPDATE kinds SET jb = jb || '{\"g\": -1}' WHERE id = 77", target.dbname)
    proof = dumped.prove(target)
    assert not proof.ok
    assert labels(proof) == {'"public"."kinds"'}
    (diff,) = proof.rows.differences
    assert diff.aspect == "content" and diff.expected == diff.restored == 1200
    assert '"public"."kinds"' in proof.report() and "content differs" in proof.report()


def test_a_changed_toasted_value_is_caught(dumped: Dumped, restored: Any) -> None:
    """One character changed inside a TOASTed text is a content difference."""
    target = restored()
    sql(
        "UPDATE kinds SET big = overlay(big placing 'Z' from 9000 for 1) WHERE id = 50",
        target.dbname,
    )
    assert labels(dumped.prove(target)) == {'"public"."kinds"'}


def test_a_row_swapped_between_two_tables_fails_naming_both(dumped: Dumped, restored: Any) -> None:
    """Moving one row each way between ledger and archive keeps counts, fails both by content."""
    target = restored()
    sql(
        "ALTER TABLE ledger DISABLE TRIGGER ALL;"
        " WITH a AS (DELETE FROM archive WHERE id = 100001 RETURNING *),"
        " l AS (DELETE FROM ledger WHERE id = 5 RETURNING *),"
        " ia AS (INSERT INTO archive SELECT * FROM l)"
        " INSERT INTO ledger SELECT * FROM a",
        target.dbname,
    )
    proof = dumped.prove(target)
    assert labels(proof) >= {'"public"."ledger"', '"public"."archive"'}
    assert {d.aspect for d in proof.rows.differences if "totals" not in d.label} == {"content"}


def test_a_dropped_unique_index_fails_naming_the_index(dumped: Dumped, restored: Any) -> None:
    """A restore without its unique index is not verified; the index is named."""
    target = restored()
    sql("DROP INDEX kinds_ci_key", target.dbname)
    proof = dumped.prove(target)
    assert not proof.ok and proof.rows.ok
    assert labels(proof) == {'"public"."kinds"."kinds_ci_key"'}
    assert "kinds_ci_key" in proof.report() and "missing after the restore" in proof.report()


def test_a_changed_sequence_value_fails_naming_the_sequence(dumped: Dumped, restored: Any) -> None:
    """A sequence set back in the restored database is named with both values."""
    target = restored()
    sql("SELECT setval('ledger_id_seq', 10)", target.dbname)
    proof = dumped.prove(target)
    assert labels(proof) == {'"public"."ledger_id_seq"'}
    (diff,) = proof.objects.differences
    assert diff.problem == "value" and "3001" in diff.expected and "11" in diff.restored


def test_a_validated_constraint_and_a_changed_policy_are_differences(
    dumped: Dumped, restored: Any
) -> None:
    """NOT VALID state and policy expressions are part of the proof."""
    target = restored()
    sql(
        "ALTER TABLE kinds VALIDATE CONSTRAINT kinds_p_small;"
        " ALTER POLICY ledger_positive ON ledger USING (amount >= 0)",
        target.dbname,
    )
    assert labels(dumped.prove(target)) == {
        '"public"."kinds"."kinds_p_small"',
        '"public"."ledger"."ledger_positive"',
    }


def test_rows_moved_between_enum_hash_partitions_are_compared_at_the_root(
    dumped: Dumped, restored: Any, source: str
) -> None:
    """pg_dump loads hash-on-enum leaves through the root; rows land elsewhere; still verified."""
    target = restored()
    leaves = "SELECT string_agg(tableoid::regclass || '=' || n, ',' ORDER BY 1) FROM "
    leaves += "(SELECT tableoid, count(*) n FROM e GROUP BY 1) s"
    before, after = sql(leaves, source), sql(leaves, target.dbname)
    assert before != after, "the premise: rows moved between leaves on restore"
    assert sql("SELECT count(*) FROM e", target.dbname) == "7000"
    proof = dumped.prove(target)
    assert proof.ok, proof.report()
    assert proof.rows.roots == ['"public"."e"']
    assert any('"public"."e": compared as a whole' in line for line in proof.notes())
    # and a changed row under the root is still named, by the root
    sql("UPDATE e SET id = -id WHERE id = 7", target.dbname)
    assert labels(dumped.prove(target)) == {'"public"."e"'}
