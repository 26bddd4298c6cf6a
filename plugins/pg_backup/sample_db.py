"""Reproducible sample "university voting system" database.

The schema mimics a Prisma application (quoted mixed-case identifiers) and is
filled server-side with ``INSERT ... SELECT generate_series`` statements whose
values are derived from ``md5`` of the row index, so two builds with the same
number of votes have identical content on any PostgreSQL >= 11.

Used by the demo (a few hundred thousand votes), the benchmarks (0.25 GB, 1 GB,
4 GB) and the docker-compose seed::

    python -m pg_backup.sample_db --dsn "host=127.0.0.1 dbname=postgres" \
        --db voting --votes 300000
    python -m pg_backup.sample_db --dsn "host=127.0.0.1 dbname=postgres" \
        --db bench_1g --size 1G --replace

Credentials come only from the dsn or the libpq environment (PGPASSWORD,
~/.pgpass, ...); the dsn is never printed.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from typing import Any

POSITIONS = 10
"""Number of rows in "Position"."""
CANDIDATES_PER_POSITION = 4
CANDIDATES = POSITIONS * CANDIDATES_PER_POSITION
"""Number of rows in "Candidate" (candidate ``p + POSITIONS * k`` runs for position ``p``)."""
_CANDIDATE_WEIGHTS = (40, 30, 18, 12)  # percent of a position's votes per ballot slot

# Calibration of votes_for_size: pg_database_size right after create_sample_db(), measured
# on PostgreSQL 15.20 (x86_64, 8 kB pages, UTF8/C database from template0,
# maintenance_work_mem 64MB as set by create_sample_db). Rebuilds repeat within ~64 kB.
#
#       votes   pg_database_size   bytes/vote above the empty database
#           0          8,208,899   -        (catalogs + empty schema)
#      50,000         74,736,131   1330.5
#     150,000        196,772,355   1257.1
#     209,491        255,148,547   1178.8
#     225,000        271,680,003   1171.0
#     240,000        290,374,147   1175.7
#     260,000        320,610,819   1201.5
#     300,000        377,463,299   1230.8
#     907,032      1,065,026,051   1165.1
#   1,000,000      1,180,377,603   1172.2
#   3,500,000      4,103,586,307   1170.1   (marginal 1,000,000 -> 3,500,000: 1169.3)
#   3,663,671      4,292,796,931   1169.5
#
# Check: --size 0.25G / 1G / 4G then gave 267,829,763 / 1,071,440,387 / 4,292,796,931
# bytes, i.e. -0.23% / -0.21% / -0.05% off target.
# A vote costs its "Vote" row and 4 indexes (~200 B), 1.5 "AuditLog" rows with their jsonb
# entry, GIN and btree indexes (~920 B) and 0.1 "User" row (~45 B). The curve is not a
# straight line: btree deduplication and GIN posting lists pay off with repetition, and the
# GIN index grows in steps with the number of maintenance_work_mem batches of its build.
# So votes_for_size interpolates this table (dense around the 0.25G/1G/4G benchmark sizes)
# and extrapolates past its end with the last slope.
_SIZE_CALIBRATION: tuple[tuple[int, int], ...] = (
    (0, 8_208_899),
    (50_000, 74_736_131),
    (150_000, 196_772_355),
    (209_491, 255_148_547),
    (225_000, 271_680_003),
    (240_000, 290_374_147),
    (260_000, 320_610_819),
    (300_000, 377_463_299),
    (907_032, 1_065_026_051),
    (1_000_000, 1_180_377_603),
    (3_500_000, 4_103_586_307),
    (3_663_671, 4_292_796_931),
)
BASE_BYTES = _SIZE_CALIBRATION[0][1]
"""pg_database_size of a sample database with no votes (measured)."""
BYTES_PER_VOTE = 1169.3
"""Marginal bytes per vote from 1M votes on (measured, see the table above)."""

_ELECTION_START = "TIMESTAMPTZ '2024-03-04 08:00:00+00'"  # 3 days, 08:00-20:00 UTC
_PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})

_POSITION_ROWS = (
    ("President", 1),
    ("Vice President", 1),
    ("General Secretary", 1),
    ("Treasurer", 1),
    ("Academic Affairs Officer", 2),
    ("Welfare Officer", 1),
    ("Sports Secretary", 1),
    ("Entertainment Secretary", 1),
    ("International Students Officer", 1),
    ("Faculty Representative", 3),
)
_FIRST_NAMES = (
    "Amara", "Ben", "Chen", "Dana", "Elif", "Farid", "Grace", "Hiro", "Ines",
    "Jonas", "Kemi", "Liam", "Maya", "Nikos", "Olga", "Pedro", "Qi", "Rosa",
    "Sami", "Tara", "Umar", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Aisha",
    "Bruno", "Carmen", "Dmitri", "Esther", "Felix",
)  # fmt: skip
_LAST_NAMES = (
    "Okafor", "Smith", "Wang", "Kowalski", "Yilmaz", "Haddad", "Murphy",
    "Tanaka", "Garcia", "Berg", "Adeyemi", "Nguyen", "Patel", "Papadopoulos",
    "Ivanova", "Silva", "Li", "Rossi", "Kariuki", "Jensen", "Khan", "Novak",
    "Zhang", "Lopez", "Demir", "Fischer", "Mensah", "Dubois",
)  # fmt: skip
_FACULTIES = (
    "Engineering", "Medicine", "Law", "Arts and Humanities", "Natural Sciences",
    "Business School", "Social Sciences", "Education",
)  # fmt: skip
_MANIFESTO_SENTENCES = (
    "I will extend library opening hours during exam season.",
    "Every student deserves affordable housing close to campus.",
    "I will push for free mental health support with short waiting times.",
    "Societies need fair and transparent funding.",
    "Let us make the campus fully accessible by the end of my term.",
    "I will publish every union budget line online.",
    "Better late-night buses and safer walking routes home.",
    "Cheaper, healthier food in every canteen.",
    "A stronger voice for international and postgraduate students.",
    "More study spaces with power sockets and reliable Wi-Fi.",
    "Lecture recordings for every course, by default.",
    "A greener campus: more bike racks, less single-use plastic.",
)
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
    " like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/122.0.6261.105 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (Linux; Android 13; SM-A536B) AppleWebKit/537.36 (KHTML, like Gecko)"
    " SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
    "UniVote/2.4.1 (iOS 17.3; iPhone14,5)",
)

_TABLES_SQL = """\
CREATE TABLE "Position" (
    "id" SERIAL NOT NULL,
    "title" TEXT NOT NULL,
    "seats" INTEGER NOT NULL DEFAULT 1,
    "createdAt" TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Position_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Candidate" (
    "id" SERIAL NOT NULL,
    "positionId" INTEGER NOT NULL,
    "fullName" TEXT NOT NULL,
    "manifesto" TEXT,
    "photo" BYTEA,
    "createdAt" TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Candidate_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "User" (
    "id" SERIAL NOT NULL,
    "studentNumber" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "fullName" TEXT,
    "faculty" TEXT,
    "passwordHash" TEXT,
    "createdAt" TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "Vote" (
    "id" BIGSERIAL NOT NULL,
    "userId" INTEGER NOT NULL,
    "candidateId" INTEGER NOT NULL,
    "positionId" INTEGER NOT NULL,
    "castAt" TIMESTAMPTZ NOT NULL,
    "ip" INET,
    CONSTRAINT "Vote_pkey" PRIMARY KEY ("id")
);

CREATE TABLE "AuditLog" (
    "id" BIGSERIAL NOT NULL,
    "at" TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "actorId" INTEGER,
    "action" TEXT NOT NULL,
    "entry" JSONB NOT NULL,
    CONSTRAINT "AuditLog_pkey" PRIMARY KEY ("id")
);
"""

_INDEXES_SQL = """\
CREATE UNIQUE INDEX "Position_title_key" ON "Position"("title");
CREATE UNIQUE INDEX "User_studentNumber_key" ON "User"("studentNumber");
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
CREATE UNIQUE INDEX "Vote_userId_positionId_key" ON "Vote"("userId", "positionId");
CREATE INDEX "Vote_candidateId_idx" ON "Vote"("candidateId");
CREATE INDEX "Vote_castAt_idx" ON "Vote"("castAt");
CREATE INDEX "AuditLog_at_idx" ON "AuditLog"("at");
CREATE INDEX "AuditLog_entry_idx" ON "AuditLog" USING GIN ("entry");
"""

_FOREIGN_KEYS_SQL = """\
ALTER TABLE "Candidate" ADD CONSTRAINT "Candidate_positionId_fkey"
    FOREIGN KEY ("positionId") REFERENCES "Position"("id")
    ON DELETE RESTRICT ON UPDATE CASCADE;
ALTER TABLE "Vote" ADD CONSTRAINT "Vote_userId_fkey"
    FOREIGN KEY ("userId") REFERENCES "User"("id")
    ON DELETE RESTRICT ON UPDATE CASCADE;
ALTER TABLE "Vote" ADD CONSTRAINT "Vote_candidateId_fkey"
    FOREIGN KEY ("candidateId") REFERENCES "Candidate"("id")
    ON DELETE RESTRICT ON UPDATE CASCADE;
ALTER TABLE "Vote" ADD CONSTRAINT "Vote_positionId_fkey"
    FOREIGN KEY ("positionId") REFERENCES "Position"("id")
    ON DELETE RESTRICT ON UPDATE CASCADE;
"""


def users_for_votes(votes: int) -> int:
    """Return the number of "User" rows for ``votes`` votes (one vote per position each)."""
    return -(-votes // POSITIONS)


def audit_rows_for_votes(votes: int) -> int:
    """Return the number of "AuditLog" rows for ``votes`` votes (about 1.5 per vote)."""
    return votes + votes // 2


def schema_sql() -> str:
    """Return the DDL: tables, then unique/secondary indexes, then foreign keys."""
    return "\n".join((_TABLES_SQL, _INDEXES_SQL, _FOREIGN_KEYS_SQL))


def _lit(value: str) -> str:
    """Quote ``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _array(values: tuple[str, ...]) -> str:
    """Return an SQL ``ARRAY[...]::text[]`` literal of ``values``."""
    return "ARRAY[" + ", ".join(_lit(v) for v in values) + "]::text[]"


def _pick(values: tuple[str, ...], h: str) -> str:
    """Return SQL choosing an element of ``values`` by the non-negative integer SQL ``h``."""
    return f"({_array(values)})[1 + ({h}) % {len(values)}]"


def _hash_columns(m: str, prefix: str) -> str:
    """Return select-list SQL for 4 independent 28-bit ints ``{prefix}0..3`` of md5 hex ``m``."""
    return ", ".join(
        f"('x' || substr({m}, {1 + 7 * n}, 7))::bit(28)::int AS {prefix}{n}" for n in range(4)
    )


def _hashed_series(col: str, first: int, last: int, salt: str) -> str:
    """Return a FROM item ``g(col, m, h0..h3)`` over ``generate_series(first, last)``.

    ``m`` is ``md5(salt || col)``; ``OFFSET 0`` keeps the planner from inlining
    (and so recomputing) the hash expressions.
    """
    return (
        f"(SELECT s.*, {_hash_columns('s.m', 'h')}\n"
        f"      FROM (SELECT {col}, md5({_lit(salt)} || {col}) AS m\n"
        f"            FROM generate_series({first}::bigint, {last}::bigint) AS {col}"
        " OFFSET 0) AS s\n"
        "      OFFSET 0) AS g"
    )


def _vote_candidate(k: str, h: str) -> str:
    """Return SQL for the candidate id of vote index ``k`` given its hash int ``h``."""
    whens = []
    cumulative = 0
    for slot, weight in enumerate(_CANDIDATE_WEIGHTS[:-1]):
        cumulative += weight
        whens.append(f"WHEN {h} % 100 < {cumulative} THEN {slot}")
    slot_sql = f"CASE {' '.join(whens)} ELSE {len(_CANDIDATE_WEIGHTS) - 1} END"
    # Rotate the favourite by position so that different slots win different races.
    return (
        f"({k} % {POSITIONS} + 1 + {POSITIONS} * "
        f"(({slot_sql} + {k} % {POSITIONS}) % {CANDIDATES_PER_POSITION}))::int"
    )


def _vote_cast_at(h: str) -> str:
    """Return SQL for a vote's "castAt" from hash int ``h``: one of 3 days, 08:00-20:00 UTC."""
    return f"{_ELECTION_START} + (({h} % 3) * 86400 + {h} / 3 % 43200) * INTERVAL '1 second'"


def _vote_ip(h: str) -> str:
    """Return SQL for a vote's address from hash int ``h``: mostly campus 10/8, some CGNAT."""
    return (
        f"CASE WHEN {h} % 10 < 8 THEN INET '10.0.0.0' + ({h} / 10 % 16777216) "
        f"ELSE INET '100.64.0.0' + ({h} / 10 % 4194304) END"
    )


def _positions_sql() -> str:
    """Return the INSERT of the fixed "Position" rows."""
    rows = ",\n    ".join(
        f"({i}, {_lit(title)}, {seats}, "
        f"TIMESTAMPTZ '2024-02-01 10:00:00+00' + INTERVAL '{i} minutes')"
        for i, (title, seats) in enumerate(_POSITION_ROWS[:POSITIONS], start=1)
    )
    return f'INSERT INTO "Position" ("id", "title", "seats", "createdAt") VALUES\n    {rows};\n'


def _candidates_sql() -> str:
    """Return the INSERT of the "Candidate" rows (every third one with a 2-6 KB photo)."""
    # Three distinct sentences start + n * step (mod 12), step a unit mod 12; the
    # (start, step) pair differs for each of the first 48 candidates.
    step = "(ARRAY[1, 5, 7, 11])[1 + g.c / 12 % 4]"
    manifesto = " || ' ' || ".join(
        _pick(_MANIFESTO_SENTENCES, f"g.c + {n} * {step}") for n in range(3)
    )
    photo = (
        "CASE WHEN g.c % 3 = 1 THEN '\\xffd8ffe000104a46494600'::bytea || "
        "(SELECT decode(string_agg(md5('photo:' || g.c || ':' || b), '' ORDER BY b), 'hex') "
        "FROM generate_series(1, 128 + g.h3 % 256) AS b) END"
    )
    return f"""\
INSERT INTO "Candidate" ("id", "positionId", "fullName", "manifesto", "photo", "createdAt")
SELECT g.c,
       (g.c - 1) % {POSITIONS} + 1,
       {_pick(_FIRST_NAMES, "g.h0")} || ' ' || {_pick(_LAST_NAMES, "g.h1")},
       {manifesto},
       {photo},
       TIMESTAMPTZ '2024-02-10 12:00:00+00' + (g.h2 % 604800) * INTERVAL '1 second'
FROM {_hashed_series("c", 1, CANDIDATES, "candidate:")};
"""


def _users_sql(users: int) -> str:
    """Return the INSERT of ``users`` "User" rows."""
    first = _pick(_FIRST_NAMES, "g.h0")
    last = _pick(_LAST_NAMES, "g.h1")
    return f"""\
INSERT INTO "User" ("id", "studentNumber", "email", "fullName", "faculty", "passwordHash",
                    "createdAt")
SELECT g.u,
       (2019 + g.h2 % 6)::text || lpad(g.u::text, greatest(7, length(g.u::text)), '0'),
       lower({first}) || '.' || lower({last}) || g.u || '@students.example.edu',
       {first} || ' ' || {last},
       {_pick(_FACULTIES, "g.h3")},
       '$2b$12$' || translate(substr(encode(sha512(('pw:' || g.u)::bytea), 'base64'), 1, 53),
                              '+', '.'),
       TIMESTAMPTZ '2023-09-01 00:00:00+00' + (g.h2 / 6 % 15552000) * INTERVAL '1 second'
FROM {_hashed_series("u", 1, users, "user:")};
"""


def _votes_sql(votes: int) -> str:
    """Return the INSERT of the "Vote" rows: vote i is by user i // P + 1 for position i % P + 1."""
    return f"""\
INSERT INTO "Vote" ("id", "userId", "candidateId", "positionId", "castAt", "ip")
SELECT g.i + 1,
       g.i / {POSITIONS} + 1,
       {_vote_candidate("g.i", "g.h0")},
       g.i % {POSITIONS} + 1,
       {_vote_cast_at("g.h1")},
       {_vote_ip("g.h2")}
FROM {_hashed_series("i", 0, votes - 1, "vote:")};
"""


def _audit_sql(votes: int) -> str:
    """Return the INSERT of the "AuditLog" rows.

    Rows ``j`` with ``j % 3 < 2`` record the casting of vote ``k = j // 3 * 2 + j % 3``
    (same time, voter, candidate and address as the vote); the others are logins,
    ballot views, logouts, profile changes and system snapshots.
    """
    rows = audit_rows_for_votes(votes)
    users = max(users_for_votes(votes), 1)
    bucket = "g.a3 % 100"
    other_event = (
        f"CASE WHEN {bucket} < 45 THEN 'auth.login' WHEN {bucket} < 60 THEN 'auth.login_failed' "
        f"WHEN {bucket} < 80 THEN 'ballot.viewed' WHEN {bucket} < 90 THEN 'auth.logout' "
        f"WHEN {bucket} < 96 THEN 'profile.updated' WHEN {bucket} < 99 "
        "THEN 'password.reset_requested' ELSE 'system.turnout_snapshot' END"
    )
    other_details = f"""CASE
               WHEN {bucket} < 45 THEN jsonb_build_object(
                   'method', CASE WHEN g.a2 % 4 = 0 THEN 'sso' ELSE 'password' END,
                   'mfa', g.a2 % 3 = 0, 'sessionId', substr(md5(g.ma), 1, 24))
               WHEN {bucket} < 60 THEN jsonb_build_object(
                   'reason', CASE WHEN g.a2 % 5 = 0 THEN 'account_locked'
                                  ELSE 'invalid_password' END,
                   'attempt', 1 + g.a2 % 5)
               WHEN {bucket} < 80 THEN jsonb_build_object(
                   'positionId', 1 + g.a2 % {POSITIONS}, 'durationMs', 200 + g.a2 % 20000)
               WHEN {bucket} < 90 THEN jsonb_build_object('sessionSeconds', 30 + g.a2 % 3600)
               WHEN {bucket} < 96 THEN jsonb_build_object(
                   'fields', CASE WHEN g.a2 % 2 = 0 THEN jsonb_build_array('faculty')
                                  ELSE jsonb_build_array('fullName', 'email') END)
               WHEN {bucket} < 99 THEN jsonb_build_object(
                   'channel', 'email', 'tokenTtlMinutes', 30)
               ELSE jsonb_build_object('votesSoFar', g.j * 2 / 3, 'positions', {POSITIONS})
           END"""
    event_h = other_event.replace("g.", "h.")
    vote_details = f"""jsonb_build_object(
               'voteId', g.k + 1,
               'positionId', g.k % {POSITIONS} + 1,
               'candidateId', {_vote_candidate("g.k", "g.v0")},
               'receipt', upper(substr(g.mv, 23, 10)))"""
    return f"""\
INSERT INTO "AuditLog" ("id", "at", "actorId", "action", "entry")
SELECT g.j + 1,
       CASE WHEN g.k IS NOT NULL THEN {_vote_cast_at("g.v1")}
            ELSE TIMESTAMPTZ '2024-03-02 00:00:00+00' + (g.a2 % 518400) * INTERVAL '1 second'
       END,
       CASE WHEN g.k IS NOT NULL THEN (g.k / {POSITIONS} + 1)::int
            WHEN {bucket} < 99 THEN g.a1 % {users} + 1 END,
       g.event,
       jsonb_build_object(
           'event', g.event,
           'userAgent', CASE WHEN g.event = 'system.turnout_snapshot' THEN 'UniVote-scheduler/1.0'
                             ELSE {_pick(_USER_AGENTS, "g.a0")} END,
           'ip', host(CASE WHEN g.k IS NOT NULL THEN {_vote_ip("g.v2")}
                           ELSE INET '10.0.0.0' + g.a2 % 16777216 END),
           'requestId', g.ma::uuid,
           'details', CASE WHEN g.k IS NOT NULL THEN {vote_details}
                           ELSE {other_details} END)
FROM (SELECT h.*, CASE WHEN h.k IS NOT NULL THEN 'vote.cast' ELSE {event_h} END AS event
      FROM (SELECT s.*, {_hash_columns("s.mv", "v")}, {_hash_columns("s.ma", "a")}
            FROM (SELECT j, k, md5('vote:' || k) AS mv, md5('audit:' || j) AS ma
                  FROM (SELECT j, CASE WHEN j % 3 < 2 THEN j / 3 * 2 + j % 3 END AS k
                        FROM generate_series(0::bigint, {rows - 1}::bigint) AS j) AS t
                  OFFSET 0) AS s
            OFFSET 0) AS h
      OFFSET 0) AS g;
"""


def populate_sql(votes: int) -> str:
    """Return the INSERT ... SELECT statements (and sequence resets) for ``votes`` votes."""
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 0:
        raise ValueError(f"votes must be a non-negative integer, got {votes!r}")
    parts = [_positions_sql(), _candidates_sql()]
    if votes:
        parts += [_users_sql(users_for_votes(votes)), _votes_sql(votes), _audit_sql(votes)]
    for table in ("Position", "Candidate", "User", "Vote", "AuditLog"):
        parts.append(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
            f'coalesce((SELECT max("id") FROM "{table}"), 0) + 1, false);\n'
        )
    return "\n".join(parts)


def votes_for_size(target_bytes: int) -> int:
    """Return how many votes give a database of about ``target_bytes`` (pg_database_size)."""
    if target_bytes < 0:
        raise ValueError(f"target size must be non-negative, got {target_bytes!r}")
    if target_bytes <= BASE_BYTES:
        return 0
    for (v0, b0), (v1, b1) in itertools.pairwise(_SIZE_CALIBRATION):
        if target_bytes <= b1:
            return round(v0 + (target_bytes - b0) * (v1 - v0) / (b1 - b0))
    last_votes, last_bytes = _SIZE_CALIBRATION[-1]  # extrapolate past the last point
    return round(last_votes + (target_bytes - last_bytes) / BYTES_PER_VOTE)


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|(b))?\s*", re.IGNORECASE)
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
SIZE_FORMS = (
    "a non-negative number with an optional binary unit B, K, M, G or T "
    "(optionally followed by B or iB), e.g. '250M', '1G', '0.25G', '1.5GB', '512MiB'"
)


def parse_size(text: str) -> int:
    """Parse a size such as "250M", "1G", "0.25G" or "1.5GB" (binary units) into bytes."""
    match = _SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected {SIZE_FORMS}")
    number, unit, _ = match.groups()
    multiplier = _SIZE_UNITS[unit.lower()] if unit else 1
    return round(float(number) * multiplier)


def _pretty(n: int) -> str:
    """Format a byte count with a binary unit."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def _connect_maintenance(dsn: str) -> Any:
    """Connect (autocommit) to the maintenance database named by ``dsn`` (default "postgres")."""
    import os

    import psycopg2
    from psycopg2.extensions import parse_dsn

    if "dbname" in parse_dsn(dsn) or os.environ.get("PGDATABASE"):
        conn = psycopg2.connect(dsn)
    else:
        conn = psycopg2.connect(dsn, dbname="postgres")
    conn.autocommit = True
    return conn


def create_sample_db(
    dsn: str,
    dbname: str,
    *,
    votes: int | None = None,
    size: str | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Create and fill database ``dbname`` on ``dsn``'s server; return a summary dict.

    Give exactly one of ``votes`` or ``size`` (e.g. "1G", see ``parse_size``).
    Refuses (ValueError) an existing ``dbname`` unless ``replace`` is true.
    """
    import psycopg2
    from psycopg2 import sql

    if (votes is None) == (size is None):
        raise ValueError("give exactly one of votes or size")
    if size is not None:
        votes = votes_for_size(parse_size(size))
    assert votes is not None
    populate = populate_sql(votes)  # validates votes
    if not dbname or len(dbname.encode()) > 63:
        raise ValueError(f"invalid database name {dbname!r} (1-63 bytes)")
    ident = sql.Identifier(dbname)

    admin = _connect_maintenance(dsn)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is not None:
                if not replace:
                    raise ValueError(
                        f"database {dbname!r} already exists (use replace=True / --replace)"
                    )
                if dbname in _PROTECTED_DATABASES:
                    raise ValueError(f"refusing to replace database {dbname!r}")
                cur.execute(sql.SQL("DROP DATABASE {}").format(ident))
            cur.execute(
                sql.SQL(
                    "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' "
                    "LC_COLLATE 'C' LC_CTYPE 'C'"
                ).format(ident)
            )
        try:
            conn = psycopg2.connect(dsn, dbname=dbname)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET LOCAL statement_timeout = 0")
                    cur.execute("SET LOCAL maintenance_work_mem = '64MB'")
                    # Indexes and FKs are built after the load: same result, much faster.
                    cur.execute(_TABLES_SQL)
                    cur.execute(populate)
                    cur.execute(_INDEXES_SQL)
                    cur.execute(_FOREIGN_KEYS_SQL)
                conn.commit()
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("ANALYZE")
                    cur.execute("SELECT pg_database_size(current_database())")
                    nbytes = cur.fetchone()[0]
            finally:
                conn.close()
        except BaseException:
            try:  # best effort: do not leave a half-built database behind
                with admin.cursor() as cur:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
            except psycopg2.Error:
                pass
            raise
    finally:
        admin.close()
    return {
        "database": dbname,
        "votes": votes,
        "users": users_for_votes(votes),
        "bytes": nbytes,
    }


def _redact(message: str, dsn: str) -> str:
    """Return ``message`` without any part of ``dsn`` that could carry a password."""
    from psycopg2.extensions import parse_dsn

    if "invalid dsn" in message or "connection info string" in message or "URI" in message:
        return "invalid --dsn connection string (not shown)"
    try:
        password = parse_dsn(dsn).get("password")
    except Exception:  # an unparsable dsn is reported as such above
        password = None
    return message.replace(password, "***") if password else message


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one summary line and returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m pg_backup.sample_db",
        description="Create a reproducible sample university voting database.",
    )
    parser.add_argument(
        "--dsn",
        default="",
        help="libpq connection string of the server's maintenance database, e.g. \"host=127.0.0.1 "
        'dbname=postgres" (default: libpq environment); put passwords in PGPASSWORD or ~/.pgpass',
    )
    parser.add_argument("--db", required=True, help="name of the database to create")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--votes", type=int, help="number of votes to generate")
    amount.add_argument("--size", help="approximate database size, e.g. 250M, 1G, 0.25G, 1.5GB")
    parser.add_argument(
        "--replace", action="store_true", help="drop the database first if it exists"
    )
    args = parser.parse_args(argv)

    import psycopg2

    started = time.monotonic()
    try:
        result = create_sample_db(
            args.dsn, args.db, votes=args.votes, size=args.size, replace=args.replace
        )
    except (ValueError, psycopg2.Error) as exc:
        print(f"sample_db: error: {_redact(str(exc).strip(), args.dsn)}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(
        f"created database {result['database']}: {result['votes']} votes, "
        f"{result['users']} users, {_pretty(result['bytes'])} ({result['bytes']} bytes) "
        f"in {elapsed:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
