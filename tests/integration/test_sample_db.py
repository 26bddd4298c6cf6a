"""The sample voting database, built on the real local PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest

from pg_backup import sample_db
from tests.conftest import PG_HOST, PG_PORT, PG_USER

SMALL_VOTES = 2003  # not a multiple of POSITIONS: the last user votes for 3 positions only
DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres"
TABLES = ("Position", "Candidate", "User", "Vote", "AuditLog")


def query(dbname: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one query in a database of the test server and return its rows."""
    conn = psycopg2.connect(DSN, dbname=dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def scalar(dbname: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """Run a query returning one value."""
    return query(dbname, sql, params)[0][0]


def drop(names: list[str]) -> None:
    """Drop the given databases if they exist."""
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def new_name() -> str:
    """A fresh test database name."""
    return f"pgb_sample_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def db_names(pg_server: None) -> Iterator[list[str]]:
    """Names of the databases this module may create; all dropped at the end."""
    names: list[str] = []
    yield names
    drop(names)


@pytest.fixture(scope="module")
def build(db_names: list[str]) -> Callable[..., dict[str, Any]]:
    """Build a sample database under a fresh test name; return create_sample_db's result."""

    def make(**kwargs: Any) -> dict[str, Any]:
        name = new_name()
        db_names.append(name)
        return sample_db.create_sample_db(DSN, name, **kwargs)

    return make


@pytest.fixture(scope="module")
def small(build: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A small sample database shared by the read-only tests."""
    return build(votes=SMALL_VOTES)


def table_digest(dbname: str, table: str) -> str:
    """md5 of every row of a table, in id order."""
    return scalar(
        dbname, f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM \"{table}\" t"
    )


def test_small_db_counts_match_report_and_formula(small):
    """Row counts equal what create_sample_db reports and what the formulas say."""
    db = small["database"]
    assert small["votes"] == SMALL_VOTES
    assert small["users"] == sample_db.users_for_votes(SMALL_VOTES) == 201
    assert small["bytes"] > sample_db.BASE_BYTES
    counts = {t: scalar(db, f'SELECT count(*) FROM "{t}"') for t in TABLES}
    assert counts == {
        "Position": sample_db.POSITIONS,
        "Candidate": sample_db.CANDIDATES,
        "User": small["users"],
        "Vote": SMALL_VOTES,
        "AuditLog": sample_db.audit_rows_for_votes(SMALL_VOTES),
    }
    assert counts["AuditLog"] == SMALL_VOTES + SMALL_VOTES // 2


def test_sequences_continue_after_generated_ids(small):
    """Each serial sequence hands out max(id) + 1 next, so the app can keep inserting."""
    db = small["database"]
    for table in TABLES:
        got = scalar(db, f"SELECT nextval(pg_get_serial_sequence('\"{table}\"', 'id'))")
        assert got == scalar(db, f'SELECT max(id) + 1 FROM "{table}"'), table


def test_one_vote_per_user_and_position(small):
    """No (userId, positionId) pair repeats and the unique index enforcing it exists."""
    db = small["database"]
    dupes = scalar(
        db,
        'SELECT count(*) FROM (SELECT 1 FROM "Vote" GROUP BY "userId", "positionId" '
        "HAVING count(*) > 1) d",
    )
    assert dupes == 0
    assert scalar(
        db,
        "SELECT indisunique FROM pg_index WHERE indexrelid = "
        "'public.\"Vote_userId_positionId_key\"'::regclass",
    )
    assert scalar(db, 'SELECT max(n) FROM (SELECT count(*) n FROM "Vote" GROUP BY "userId") c') == (
        sample_db.POSITIONS
    )


def test_foreign_keys_hold_and_are_declared(small):
    """Every reference resolves, the candidate runs for the voted position, FKs are validated."""
    db = small["database"]
    orphans = scalar(
        db,
        """SELECT count(*) FROM "Vote" v
           LEFT JOIN "User" u ON u.id = v."userId"
           LEFT JOIN "Candidate" c ON c.id = v."candidateId"
           LEFT JOIN "Position" p ON p.id = v."positionId"
           WHERE u.id IS NULL OR c.id IS NULL OR p.id IS NULL
              OR c."positionId" <> v."positionId" """,
    )
    assert orphans == 0
    fks = query(
        db,
        "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' ORDER BY conname",
    )
    assert fks == [
        ("Candidate_positionId_fkey", True),
        ("Vote_candidateId_fkey", True),
        ("Vote_positionId_fkey", True),
        ("Vote_userId_fkey", True),
    ]


def test_schema_has_prisma_style_names_and_indexes(small):
    """Mixed-case tables and columns, the GIN index on entry and bytea photos are present."""
    db = small["database"]
    columns = set(
        query(
            db,
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'",
        )
    )
    for expected in [
        ("Position", "createdAt"),
        ("Candidate", "positionId"),
        ("User", "studentNumber"),
        ("User", "passwordHash"),
        ("Vote", "castAt"),
        ("AuditLog", "actorId"),
        ("AuditLog", "entry"),
    ]:
        assert expected in columns
    assert (
        scalar(
            db,
            "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
            "WHERE c.relname = 'AuditLog_entry_idx'",
        )
        == "gin"
    )
    photos = query(db, 'SELECT length(photo) FROM "Candidate" WHERE photo IS NOT NULL')
    assert 10 <= len(photos) < sample_db.CANDIDATES
    assert all(2000 <= n <= 6200 for (n,) in photos)
    assert (
        scalar(db, 'SELECT count(*) FROM "User" WHERE "passwordHash" !~ \'^\\$2b\\$12\\$.{53}$\'')
        == 0
    )


def test_audit_entries_match_their_votes(small):
    """Each vote.cast audit entry agrees with its vote; entries have event, userAgent, details."""
    db = small["database"]
    mismatched = scalar(
        db,
        """SELECT count(*) FROM "AuditLog" a
           LEFT JOIN "Vote" v ON v.id = (a.entry -> 'details' ->> 'voteId')::bigint
           WHERE a.action = 'vote.cast'
             AND (v.id IS NULL OR v."castAt" <> a.at OR v."userId" <> a."actorId"
                  OR v."candidateId" <> (a.entry -> 'details' ->> 'candidateId')::int
                  OR host(v.ip) <> a.entry ->> 'ip')""",
    )
    assert mismatched == 0
    assert scalar(db, "SELECT count(*) FROM \"AuditLog\" WHERE action = 'vote.cast'") == SMALL_VOTES
    malformed = scalar(
        db,
        """SELECT count(*) FROM "AuditLog"
           WHERE entry ->> 'event' IS DISTINCT FROM action OR NOT entry ? 'userAgent'
              OR jsonb_typeof(entry -> 'details') IS DISTINCT FROM 'object'""",
    )
    assert malformed == 0
    assert scalar(db, 'SELECT count(DISTINCT action) FROM "AuditLog"') >= 6


def test_same_votes_give_identical_content(small, build):
    """A second build with the same vote count has byte-identical rows in every table."""
    other = build(votes=SMALL_VOTES)
    for table in TABLES:
        assert table_digest(small["database"], table) == table_digest(other["database"], table)
    entries = "SELECT md5(string_agg(entry::text, '|' ORDER BY id)) FROM \"AuditLog\""
    assert scalar(small["database"], entries) == scalar(other["database"], entries)


def test_refuses_existing_database_unless_replace(small, build, db_names):
    """An existing name is refused without replace and left intact; replace rebuilds it."""
    name = build(votes=20)["database"]
    with pytest.raises(ValueError, match="already exists"):
        sample_db.create_sample_db(DSN, name, votes=50)
    assert scalar(name, 'SELECT count(*) FROM "Vote"') == 20
    result = sample_db.create_sample_db(DSN, name, votes=50, replace=True)
    assert result["votes"] == 50
    assert scalar(name, 'SELECT count(*) FROM "Vote"') == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of votes or size"),
        ({"votes": 10, "size": "1G"}, "exactly one of votes or size"),
        ({"votes": -1}, "non-negative integer"),
        ({"size": "lots"}, "invalid size 'lots'"),
    ],
)
def test_bad_arguments_create_nothing(db_names, kwargs, message):
    """Both or neither of votes/size, negative votes or a bad size raise before any CREATE."""
    name = new_name()
    db_names.append(name)
    with pytest.raises(ValueError, match=message):
        sample_db.create_sample_db(DSN, name, **kwargs)
    assert scalar("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)) == 0


def test_failed_build_leaves_no_database(db_names, monkeypatch):
    """When the load fails, the half-built database is dropped and the error propagates."""
    name = new_name()
    db_names.append(name)
    monkeypatch.setattr(sample_db, "populate_sql", lambda votes: "SELECT 1 / 0;")
    with pytest.raises(psycopg2.errors.DivisionByZero):
        sample_db.create_sample_db(DSN, name, votes=10)
    assert scalar("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)) == 0


def test_size_target_lands_close(build):
    """Building by size gives a pg_database_size within 10% of the target."""
    target = sample_db.parse_size("16M")
    result = build(size="16M")
    assert result["votes"] == sample_db.votes_for_size(target) > 0
    assert abs(result["bytes"] - target) / target < 0.10


def test_votes_for_size_follows_calibration():
    """votes_for_size reproduces its measured points and is monotonic, 0 for tiny targets."""
    for votes, nbytes in sample_db._SIZE_CALIBRATION:
        assert sample_db.votes_for_size(nbytes) == votes
    assert sample_db.votes_for_size(0) == 0
    sizes = [sample_db.votes_for_size(sample_db.parse_size(s)) for s in ("0.25G", "1G", "4G", "8G")]
    assert sizes == sorted(sizes)
    assert 150_000 < sizes[0] < 300_000
    assert 300_000 < sizes[1] < 1_000_000
    assert 3_500_000 < sizes[2] < 4_000_000
    with pytest.raises(ValueError, match="non-negative"):
        sample_db.votes_for_size(-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250M", 250 * 2**20),
        ("1G", 2**30),
        ("4G", 4 * 2**30),
        ("0.25G", 2**28),
        ("1.5GB", 3 * 2**29),
        ("512MiB", 2**29),
        ("100k", 102_400),
        ("2048", 2048),
        ("64B", 64),
        (" 2 gb ", 2 * 2**30),
        (".5T", 2**39),
    ],
)
def test_parse_size_accepts(text, expected):
    """parse_size understands the documented forms (binary units, case-insensitive)."""
    assert sample_db.parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "-1G", "1.5.2G", "1X", "one", "1GBB", "1e3", "nan", "1 G B"]
)
def test_parse_size_rejects(text):
    """parse_size raises a ValueError naming the bad value and the accepted forms."""
    with pytest.raises(ValueError, match="expected") as info:
        sample_db.parse_size(text)
    assert repr(text) in str(info.value)
    assert "'250M'" in str(info.value)
    assert "1.5GB" in str(info.value)


def test_schema_and_populate_sql_are_plain_sql():
    """schema_sql has all DDL pieces; populate_sql is set-based and rejects bad counts."""
    ddl = sample_db.schema_sql()
    assert ddl.count("CREATE TABLE") == 5
    assert 'USING GIN ("entry")' in ddl
    assert ddl.count("FOREIGN KEY") == 4
    sql = sample_db.populate_sql(300_000)
    assert "generate_series" in sql
    assert "299999" in sql
    assert sample_db.populate_sql(0).count("INSERT INTO") == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            sample_db.populate_sql(bad)


def test_main_prints_summary_without_password(db_names, capsys):
    """The CLI prints one summary line, never the dsn password, and fails cleanly on reuse."""
    name = new_name()
    db_names.append(name)
    dsn = f"{DSN} password=not-a-real-secret-42"
    assert sample_db.main(["--dsn", dsn, "--db", name, "--votes", "30"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    assert f"{name}: 30 votes, 3 users" in out
    assert sample_db.main(["--dsn", dsn, "--db", name, "--votes", "30"]) == 1
    out2, err2 = capsys.readouterr()
    assert "already exists" in err2
    assert out2 == ""
    assert "not-a-real-secret" not in out + err + out2 + err2
