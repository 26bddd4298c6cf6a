"""Row counts: model, catalog query, JSON codec, and the snapshot-vs-restore comparison.

The counts of the snapshot travel encrypted (``tables.json.age``): table names are data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

LARGE_OBJECTS = "<large objects>"

RelationKind = Literal["table", "matview", "large_objects"]

# Tables pg_dump writes data for: ordinary tables and leaf partitions ('r'), populated
# materialized views ('m'); not partitioned parents (no rows of their own), not members of
# extensions (pg_dump skips them), not temporary or system schemas.
TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\\_%%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
  AND NOT (n.nspname = ANY(%(exclude)s::text[]))
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class TableCount:
    """Rows of one relation (or of all large objects) in a snapshot; -1: unpopulated matview."""

    schema: str
    name: str
    kind: RelationKind
    rows: int

    @property
    def key(self) -> tuple[str, str]:
        """Identity used to match source and restored counts."""
        return (self.schema, self.name)

    @property
    def label(self) -> str:
        """``"schema"."name"`` as a person would write it."""
        if self.kind == "large_objects":
            return LARGE_OBJECTS
        return f'"{self.schema}"."{self.name}"'


def count_relations(cur: Any, schemas: list[str], exclude: list[str]) -> list[TableCount]:
    """Exact counts of every relation in the dump scope, in the cursor's snapshot.

    :param cur: a psycopg cursor (its transaction decides the snapshot)
    :param schemas: only these schemas (empty: all); ``exclude``: never these
    """
    from psycopg import sql

    cur.execute(TABLES_SQL, {"schemas": schemas, "exclude": exclude})
    counts: list[TableCount] = []
    for schema, name, relkind, populated in cur.fetchall():
        kind: RelationKind = "matview" if relkind == "m" else "table"
        if kind == "matview" and not populated:
            counts.append(TableCount(schema, name, kind, -1))
            continue
        cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, name)))
        counts.append(TableCount(schema, name, kind, int(cur.fetchone()[0])))
    cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
    counts.append(TableCount("", LARGE_OBJECTS, "large_objects", int(cur.fetchone()[0])))
    return counts


def counts_to_json(counts: list[TableCount], **meta: Any) -> dict[str, Any]:
    """The document stored (encrypted) as tables.json: ``meta`` plus ``relations``."""
    return {**meta, "relations": [asdict(c) for c in counts]}


def counts_from_json(data: dict[str, Any]) -> list[TableCount]:
    """Inverse of counts_to_json."""
    return [TableCount(**item) for item in data["relations"]]


@dataclass(frozen=True)
class Difference:
    """One relation whose restored state differs from the snapshot."""

    label: str
    expected: int | None  # None: not in the dump's snapshot (an extra relation)
    restored: int | None  # None: missing after restore

    def describe(self) -> str:
        """One line: ``"public"."Vote": snapshot 3000 restored 2999``."""
        return f"{self.label}: snapshot {self.expected} restored {self.restored}"


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing snapshot and restored counts."""

    checked: int
    rows: int
    differences: list[Difference] = field(default_factory=list)
    # Materialized views are refreshed by pg_restore from the restored tables; a source view
    # that was stale at dump time legitimately comes back with another row count.
    warnings: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences


def compare_counts(expected: list[TableCount], restored: list[TableCount]) -> Comparison:
    """Match relations by (schema, name); missing, extra and different counts are differences."""
    want = {c.key: c for c in expected}
    got = {c.key: c for c in restored}
    differences: list[Difference] = []
    warnings: list[Difference] = []
    for key in sorted(want.keys() | got.keys()):
        before, after = want.get(key), got.get(key)
        if before and after and before.rows == after.rows:
            continue
        label = (before or after).label  # type: ignore[union-attr]
        diff = Difference(label, before.rows if before else None, after.rows if after else None)
        if before and after and before.kind == "matview" and after.rows >= 0:
            warnings.append(diff)
        else:
            differences.append(diff)
    return Comparison(
        checked=len(want),
        rows=sum(c.rows for c in expected if c.rows > 0),
        differences=differences,
        warnings=warnings,
    )


def format_differences(items: list[Difference]) -> str:
    """A fixed-width table a person can read in a log or an email."""

    def show(value: int | None) -> str:
        return "missing" if value is None else f"{value:,}"

    width = max([len("relation")] + [len(d.label) for d in items])
    lines = [f"{'relation':<{width}}  {'snapshot':>14}  {'restored':>14}"]
    lines += [f"{d.label:<{width}}  {show(d.expected):>14}  {show(d.restored):>14}" for d in items]
    return "\n".join(lines)
