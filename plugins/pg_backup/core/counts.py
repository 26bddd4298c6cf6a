"""Rows and content of every relation: model, catalog query, JSON codec, the comparison.

The counts and fingerprints of the snapshot travel encrypted (``tables.json.age``): table
names and fingerprints are data. Relations are compared at the level pg_dump loads them: a
leaf partition that pg_dump loads through its partition root (hash partitioning on an enum,
whose rows may land in other leaves of the new database) is compared as part of that root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from pg_backup.core.fingerprint import LARGE_OBJECTS_SQL, add, ordered_columns, stats_sql

LARGE_OBJECTS = "<large objects>"

RelationKind = Literal["table", "matview", "large_objects"]

# Tables pg_dump writes data for: ordinary tables and leaf partitions ('r'), populated
# materialized views ('m'); not partitioned parents (no rows of their own), not members of
# extensions (pg_dump skips them), not temporary or system schemas. ``via_root``: the root a
# leaf is loaded through by pg_dump (any hash-partitioned ancestor keyed on an enum), else NULL.
TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relispopulated, c.relfilenode,
       c.relpages,
       ARRAY(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
       CASE WHEN c.relispartition AND EXISTS (
           SELECT 1 FROM pg_partition_ancestors(c.oid) AS anc(relid)
           JOIN pg_partitioned_table pt ON pt.partrelid = anc.relid
           JOIN pg_opclass oc ON oc.oid = ANY(pt.partclass::oid[])
           JOIN pg_type ty ON ty.oid = oc.opcintype
           WHERE pt.partstrat = 'h' AND (ty.oid = 'anyenum'::regtype OR ty.typtype = 'e'))
       THEN (SELECT format('"%%s"."%%s"', replace(rn.nspname, '"', '""'),
                           replace(rc.relname, '"', '""'))
             FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE rc.oid = pg_partition_root(c.oid)) END AS via_root
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
ORDER BY 2, 3
"""


def quote_label(schema: str, name: str) -> str:
    """``"schema"."name"`` as a person would write it (quotes doubled)."""
    return '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))


@dataclass(frozen=True)
class Relation:
    """One relation of the dump scope as the catalog describes it (in some snapshot)."""

    oid: int
    schema: str
    name: str
    kind: RelationKind
    populated: bool
    filenode: int
    pages: int
    columns: tuple[str, ...]
    via_root: str | None = None

    @property
    def label(self) -> str:
        """``"schema"."name"``."""
        return quote_label(self.schema, self.name)


def list_relations(cur: Any, schemas: list[str], exclude: list[str]) -> list[Relation]:
    """Every relation in the dump scope, as the cursor's snapshot sees it."""
    cur.execute(TABLES_SQL, {"schemas": schemas, "exclude": exclude})
    return [
        Relation(
            oid=int(oid),
            schema=schema,
            name=name,
            kind="matview" if relkind == "m" else "table",
            populated=bool(populated),
            filenode=int(filenode),
            pages=int(pages),
            columns=tuple(ordered_columns(columns)),
            via_root=via_root,
        )
        for oid, schema, name, relkind, populated, filenode, pages, columns, via_root in (
            cur.fetchall()
        )
    ]


@dataclass(frozen=True)
class TableCount:
    """Rows of one relation (or of all large objects) in a snapshot; -1: unpopulated matview.

    ``fingerprint``: the content fingerprint (``core.fingerprint``), None where none was taken
    (sets written before fingerprints, or content not readable). ``via_root``: the partition
    root pg_dump loads this leaf through; such leaves are compared as part of that root.
    """

    schema: str
    name: str
    kind: RelationKind
    rows: int
    fingerprint: str | None = None
    via_root: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Identity used to match source and restored counts."""
        return (self.schema, self.name)

    @property
    def label(self) -> str:
        """``"schema"."name"`` as a person would write it."""
        if self.kind == "large_objects":
            return LARGE_OBJECTS
        return quote_label(self.schema, self.name)


def measure(
    cur: Any, relation: Relation, fingerprint: bool = True, check_storage: bool = False
) -> tuple[TableCount, int | None]:
    """Count (and fingerprint) one relation in one scan; also its storage when asked.

    :returns: the count, and the relation's current filenode (read under the scan's lock) when
        ``check_storage``, else None
    """
    if relation.kind == "matview" and not relation.populated:
        return TableCount(relation.schema, relation.name, relation.kind, -1), None
    cur.execute(
        stats_sql(
            relation.schema,
            relation.name,
            relation.columns,
            relation.oid if check_storage else None,
            fingerprint,
        )
    )
    row = cur.fetchone()
    count = TableCount(
        relation.schema,
        relation.name,
        relation.kind,
        int(row[0]),
        row[1],
        relation.via_root,
    )
    return count, (int(row[2]) if check_storage and row[2] is not None else None)


def measure_large_objects(cur: Any, fingerprint: bool = True) -> TableCount:
    """Large objects: their number, and a fingerprint of their pages when readable."""
    if fingerprint:
        cur.execute(LARGE_OBJECTS_SQL)
        rows, value = cur.fetchone()
        return TableCount("", LARGE_OBJECTS, "large_objects", int(rows), value)
    cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
    return TableCount("", LARGE_OBJECTS, "large_objects", int(cur.fetchone()[0]))


def count_relations(
    cur: Any, schemas: list[str], exclude: list[str], fingerprint: bool = True
) -> list[TableCount]:
    """Exact counts (and fingerprints) of every relation in the dump scope, in one snapshot.

    The cursor's session must have ``core.fingerprint.SESSION_SETTINGS`` pinned.

    :param cur: a psycopg cursor (its transaction decides the snapshot)
    :param schemas: only these schemas (empty: all); ``exclude``: never these
    """
    counts = [measure(cur, r, fingerprint)[0] for r in list_relations(cur, schemas, exclude)]
    counts.append(measure_large_objects(cur, fingerprint))
    return counts


def counts_to_json(counts: list[TableCount], **meta: Any) -> dict[str, Any]:
    """The document stored (encrypted) as tables.json: ``meta`` plus ``relations``."""
    return {
        **meta,
        "relations": [
            {k: v for k, v in asdict(c).items() if v is not None or k in ("schema", "name")}
            for c in counts
        ],
    }


_FIELDS = {f.name for f in fields(TableCount)}


def counts_from_json(data: dict[str, Any]) -> list[TableCount]:
    """Inverse of counts_to_json (documents of every release: unknown keys are ignored)."""
    return [
        TableCount(**{k: v for k, v in item.items() if k in _FIELDS}) for item in data["relations"]
    ]


@dataclass(frozen=True)
class Difference:
    """One relation (or partition root) whose restored state differs from the snapshot.

    ``aspect`` is ``rows`` (counts differ, or the relation is missing/extra) or ``content``
    (same number of rows, other values).
    """

    label: str
    expected: int | None  # None: not in the dump's snapshot (an extra relation)
    restored: int | None  # None: missing after restore
    aspect: Literal["rows", "content"] = "rows"

    def describe(self) -> str:
        """One line: ``"public"."Vote": snapshot 3000 restored 2999``."""
        if self.aspect == "content":
            return f"{self.label}: content differs ({self.expected} rows on both sides)"
        return f"{self.label}: snapshot {self.expected} restored {self.restored}"


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing snapshot and restored counts and fingerprints."""

    checked: int
    rows: int
    differences: list[Difference] = field(default_factory=list)
    # Materialized views are refreshed by pg_restore from the restored tables; a source view
    # that was stale at dump time legitimately comes back with other rows.
    warnings: list[Difference] = field(default_factory=list)
    content_checked: int = 0
    # What was not compared by content, and why: (label, reason).
    content_skipped: list[tuple[str, str]] = field(default_factory=list)
    # Partition roots compared as a whole (their leaves are loaded through the root).
    roots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences


@dataclass
class _Group:
    label: str
    kind: RelationKind
    rows: int = 0
    fingerprints: list[str | None] = field(default_factory=list)

    def take(self, count: TableCount) -> None:
        self.rows += max(count.rows, 0)
        self.fingerprints.append(count.fingerprint)


def _groups(counts: list[TableCount], root_of: Callable[[TableCount], str | None]) -> dict:
    out: dict[Any, _Group] = {}
    for count in counts:
        root = root_of(count)
        key: Any = ("root", root) if root else count.key
        group = out.setdefault(key, _Group(root or count.label, count.kind))
        if root is None and count.rows < 0:
            group.rows = -1
        group.take(count)
    return out


def compare_counts(
    expected: list[TableCount], restored: list[TableCount], content: bool = True
) -> Comparison:
    """Match relations by (schema, name): missing, extra, other counts or fingerprints differ.

    Leaves loaded through their partition root are compared as that root.

    :param content: compare fingerprints too (where both sides have one)
    """
    roots = {c.key: c.via_root for c in expected if c.via_root}
    want = _groups(expected, lambda c: c.via_root)
    got = _groups(restored, lambda c: roots.get(c.key))
    differences: list[Difference] = []
    warnings: list[Difference] = []
    skipped: list[tuple[str, str]] = []
    content_checked = 0
    for key in sorted(want.keys() | got.keys(), key=repr):
        before, after = want.get(key), got.get(key)
        if before is None or after is None:
            label = (before or after).label  # type: ignore[union-attr]
            differences.append(
                Difference(label, before.rows if before else None, after.rows if after else None)
            )
            continue
        matview = before.kind == "matview"
        if before.rows != after.rows:
            diff = Difference(before.label, before.rows, after.rows)
            (warnings if matview and after.rows >= 0 else differences).append(diff)
            continue
        if not content or before.rows < 0:
            continue
        want_fp, got_fp = add(before.fingerprints), add(after.fingerprints)
        if want_fp is None:
            skipped.append((before.label, "no fingerprint in the set (written before them)"))
        elif got_fp is None:
            skipped.append((before.label, "no fingerprint of the restored relation"))
        elif want_fp != got_fp:
            diff = Difference(before.label, before.rows, after.rows, "content")
            (warnings if matview else differences).append(diff)
        else:
            content_checked += 1
    return Comparison(
        checked=len(want),
        rows=sum(c.rows for c in expected if c.rows > 0),
        differences=differences,
        warnings=warnings,
        content_checked=content_checked,
        content_skipped=skipped,
        roots=sorted({k[1] for k in want if isinstance(k, tuple) and k[0] == "root"}),
    )


def format_differences(items: list[Difference]) -> str:
    """A fixed-width table a person can read in a log or an email."""

    def show(value: int | None) -> str:
        return "missing" if value is None else f"{value:,}"

    def what(item: Difference) -> str:
        return "content differs" if item.aspect == "content" else "rows"

    width = max([len("relation")] + [len(d.label) for d in items])
    lines = [f"{'relation':<{width}}  {'what':<15}  {'snapshot':>14}  {'restored':>14}"]
    lines += [
        f"{d.label:<{width}}  {what(d):<15}  {show(d.expected):>14}  {show(d.restored):>14}"
        for d in items
    ]
    return "\n".join(lines)


# pg_dump holds an ACCESS SHARE lock on every table and partitioned table it dumps, all at once,
# in the server's shared lock table: max_locks_per_transaction x (server processes + prepared
# transactions) entries (PostgreSQL's NLOCKENTS).
LOCK_BUDGET_SQL = """
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
          AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend d
              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
          AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
          AND NOT (n.nspname = ANY(%(exclude)s::text[]))),
       current_setting('max_locks_per_transaction')::int,
       current_setting('max_connections')::int
       + current_setting('max_prepared_transactions')::int
       + current_setting('autovacuum_max_workers')::int + 1
       + current_setting('max_worker_processes')::int
       + current_setting('max_wal_senders')::int
"""


def lock_budget_problem(tables: int, per_transaction: int, slots: int) -> str | None:
    """Why pg_dump cannot lock ``tables`` tables at once on this server, or None if it can.

    :param tables: tables pg_dump locks (``LOCK_BUDGET_SQL``'s first column)
    :param per_transaction: the server's max_locks_per_transaction
    :param slots: server processes plus prepared transactions sharing the lock table
    """
    capacity = per_transaction * slots
    if tables <= capacity:
        return None
    needed = -(-tables * 3 // 2 // slots)  # room for pg_dump and for the application
    return (
        f"the dump must lock {tables:,} tables at once, but the server's lock table holds about "
        f"{capacity:,} locks (max_locks_per_transaction {per_transaction} x {slots} server "
        "processes): pg_dump would fail with 'out of shared memory' and the application's "
        f"sessions could fail meanwhile. Set max_locks_per_transaction to at least {needed} on "
        "the source server (it takes a restart), or narrow dump.schemas"
    )
