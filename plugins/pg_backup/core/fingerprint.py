"""Content fingerprints of tables: the SQL, the session settings it needs, and how parts add up.

A table's fingerprint is the sum, over its rows, of a 64-bit hash of the row's text form:
``sum(hashtextextended(ROW(c1, c2, ...)::text COLLATE "C", 0))`` with the columns in byte
order of their names. It is

* independent of row order (a sum) and of physical layout (columns are named, not numbered);
* independent of session settings: every session that computes one pins the settings that
  change a value's text form (``SESSION_SETTINGS``), on the source and on the restored side;
* independent of collations: the text is hashed as bytes (``COLLATE "C"``), never sorted;
* additive: the fingerprint of a partition root is the sum of its leaves' fingerprints, which
  is how tables whose rows move between leaves on restore are compared (``group_key``).

Counting and fingerprinting are one query per table (``stats_sql``): one sequential read.
PostgreSQL's ``hashtextextended`` is stable across major versions (hash partitioning relies on
it) but depends on byte order, so each side records ``PROBE_SQL``'s answer and fingerprints are
compared only between servers that agree on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

ALGORITHM: Final = "row-text-hash64-sum/1"

# What changes the text form of a value, pinned in every session that fingerprints or counts
# (source and restored side). row_security=off makes a table whose rows the login may not see
# fail loudly instead of counting only the visible rows. search_path=pg_catalog makes reg*
# values print schema-qualified on both sides.
SESSION_SETTINGS: Final = {
    "DateStyle": "ISO,YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "search_path": "pg_catalog",
    "row_security": "off",
}

PROBE_SQL: Final = "SELECT hashtextextended('pg_backup fingerprint probe' COLLATE \"C\", 0)::text"


def session_options(lock_timeout_ms: int | None = None) -> str:
    """The libpq ``options`` that pin ``SESSION_SETTINGS`` (and ``lock_timeout``) for a session.

    :param lock_timeout_ms: how long any lock wait of the session may last (None: no limit)
    """
    settings = dict(SESSION_SETTINGS)
    if lock_timeout_ms is not None:
        settings["lock_timeout"] = str(max(int(lock_timeout_ms), 1))
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def stats_sql(
    schema: str,
    name: str,
    columns: Sequence[str],
    oid: int | None = None,
    fingerprint: bool = True,
) -> Any:
    """Row count and fingerprint of one relation in one scan (a psycopg ``Composed``).

    Returns ``(rows bigint, fingerprint text)`` (the fingerprint NULL unless ``fingerprint``),
    plus ``filenode`` (the relation's current storage, read after the scan's lock is held) when
    ``oid`` is given: the caller compares it with the storage its snapshot sees.
    """
    from psycopg import sql

    query: Any
    if fingerprint:
        row = sql.SQL("ROW({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
        query = sql.SQL(
            'SELECT count(*), coalesce(sum(hashtextextended({}::text COLLATE "C", 0)), 0)::text'
        ).format(row)
    else:
        query = sql.SQL("SELECT count(*), NULL::text")
    if oid is not None:
        query = query + sql.SQL(", pg_relation_filenode({}::oid)").format(sql.Literal(int(oid)))
    return query + sql.SQL(" FROM ONLY {}").format(sql.Identifier(schema, name))


# Large objects: their pages, by object and page number (pg_dump keeps each object's oid).
LARGE_OBJECTS_SQL: Final = (
    "SELECT (SELECT count(*) FROM pg_largeobject_metadata),"
    ' coalesce(sum(hashtextextended((loid, pageno, data)::text COLLATE "C", 0)), 0)::text'
    " FROM pg_largeobject"
)


def add(fingerprints: Iterable[str | None]) -> str | None:
    """Sum of fingerprints (decimal strings); None when any part is unknown."""
    total = 0
    for value in fingerprints:
        if value is None:
            return None
        total += int(value)
    return str(total)


def ordered_columns(names: Iterable[str]) -> list[str]:
    """Column names in byte order: the same order whatever their positions in the table."""
    return sorted(names, key=lambda n: n.encode())
