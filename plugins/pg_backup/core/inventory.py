"""What must exist after a restore: the object inventory, its catalog queries, the comparison.

The dump records the inventory of its snapshot (inside the encrypted table document); the
verification takes the same inventory of the restored database and names every object that is
missing, extra or different: indexes, constraints (with their NOT VALID state), triggers, rules,
columns, views and materialized views, routines, sequences (definition and value), policies,
types, extensions, event triggers, and the database's comment.

Definitions are compared as the server prints them (``pg_get_indexdef``...); view bodies are
not compared, their columns are. Extension versions are not compared (the restoring server
installs its own default version). Sequence values move outside transactions, so the source's
value is read before pg_dump starts and after it ends; the restored value must lie between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

# Names of the categories, in the order they are reported.
CATEGORIES: Final = (
    "schema",
    "relation",
    "column",
    "index",
    "constraint",
    "trigger",
    "rule",
    "policy",
    "sequence",
    "routine",
    "type",
    "domain constraint",
    "extension",
    "event trigger",
    "database",
)

# Categories whose objects are properties of the database itself: pg_restore applies them only
# with --create, so a restore into a database made beforehand may lack them: a warning.
DATABASE_PROPERTIES: Final = frozenset({"database"})

# Objects only a superuser may create (PostgreSQL 15: CREATE EVENT TRIGGER).
SUPERUSER_ONLY: Final = frozenset({"event trigger"})

_SCOPE = """n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%'
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
  AND NOT (n.nspname = ANY(%(exclude)s::text[]))"""


def _not_member(catalog: str, oid: str) -> str:
    """SQL: the object is not a member of an extension (pg_dump leaves those to the extension)."""
    return (
        "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = "
        f"'{catalog}'::regclass AND e.objid = {oid} AND e.deptype = 'e')"
    )


_LABEL = (
    "format('\"%%s\".\"%%s\"', replace(n.nspname, '\"', '\"\"'), replace(c.relname, '\"', '\"\"'))"
)
_REL_SCOPE = f"{_SCOPE} AND {_not_member('pg_class', 'c.oid')} AND c.relpersistence <> 't'"

# category -> SQL returning (key, detail); every query takes %(schemas)s and %(exclude)s.
INVENTORY_SQL: Final[dict[str, str]] = {
    "schema": f"""
SELECT format('"%%s"', replace(n.nspname, '"', '""')), '' FROM pg_namespace n
WHERE {_SCOPE} AND {_not_member("pg_namespace", "n.oid")}""",
    "relation": f"""
SELECT {_LABEL}, concat_ws(' ', 'kind=' || c.relkind::text,
    'persistence=' || c.relpersistence::text,
    CASE WHEN c.relkind = 'm' THEN 'populated=' || c.relispopulated END,
    CASE WHEN c.relrowsecurity THEN 'row security' END,
    CASE WHEN c.relforcerowsecurity THEN 'forced' END,
    CASE WHEN c.relkind = 'p' THEN 'partition by ' || pg_get_partkeydef(c.oid) END,
    CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_REL_SCOPE}""",
    "column": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(a.attname, '"', '""')),
    concat_ws(' ', format_type(a.atttypid, a.atttypmod),
        CASE WHEN a.attnotnull THEN 'not null' END,
        CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
             THEN 'collate ' || a.attcollation::regcollation::text END,
        CASE WHEN a.attidentity::text <> '' THEN 'identity ' || a.attidentity::text END,
        CASE WHEN a.attgenerated::text <> '' THEN 'generated ' || pg_get_expr(d.adbin, d.adrelid)
             WHEN d.adbin IS NOT NULL THEN 'default ' || pg_get_expr(d.adbin, d.adrelid) END)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND {_REL_SCOPE}""",
    "index": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(ic.relname, '"', '""')),
    pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indisvalid AND {_REL_SCOPE}""",
    "constraint": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(k.conname, '"', '""')),
    concat_ws(' ', pg_get_constraintdef(k.oid), CASE WHEN NOT k.convalidated THEN '(NOT VALID)' END)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_REL_SCOPE}""",
    "trigger": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(g.tgname, '"', '""')),
    pg_get_triggerdef(g.oid) || ' enabled=' || g.tgenabled::text
FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND {_REL_SCOPE}""",
    "rule": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(r.rulename, '"', '""')),
    pg_get_ruledef(r.oid) || ' enabled=' || r.ev_enabled::text
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND {_REL_SCOPE}""",
    "policy": f"""
SELECT {_LABEL} || '.' || format('"%%s"', replace(p.polname, '"', '""')),
    concat_ws(' ', 'for ' || p.polcmd::text, CASE WHEN p.polpermissive THEN 'permissive'
        ELSE 'restrictive' END,
        'to ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END,
                                    ',' ORDER BY 1) FROM unnest(p.polroles) r),
        'using ' || pg_get_expr(p.polqual, p.polrelid),
        'check ' || pg_get_expr(p.polwithcheck, p.polrelid))
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_REL_SCOPE}""",
    "sequence": f"""
SELECT {_LABEL}, concat_ws(' ', format_type(s.seqtypid, NULL), 'start ' || s.seqstart,
    'increment ' || s.seqincrement, 'min ' || s.seqmin, 'max ' || s.seqmax,
    'cache ' || s.seqcache, CASE WHEN s.seqcycle THEN 'cycle' END)
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_REL_SCOPE}""",
    "routine": f"""
SELECT format('"%%s"."%%s"', replace(n.nspname, '"', '""'), replace(p.proname, '"', '""'))
       || '(' || pg_get_function_identity_arguments(p.oid) || ')',
    concat_ws(' ', 'kind=' || p.prokind::text, 'language=' || l.lanname,
        'volatility=' || p.provolatile::text, CASE WHEN p.prosecdef THEN 'security definer' END,
        CASE WHEN p.proisstrict THEN 'strict' END,
        'returns ' || pg_get_function_result(p.oid),
        'config ' || array_to_string(p.proconfig, ','), 'body md5 ' || md5(p.prosrc))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE {_SCOPE} AND {_not_member("pg_proc", "p.oid")}""",
    "type": f"""
SELECT format('"%%s"."%%s"', replace(n.nspname, '"', '""'), replace(t.typname, '"', '""')),
    CASE t.typtype
      WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', '
                                 ORDER BY e.enumsortorder) FROM pg_enum e
                                 WHERE e.enumtypid = t.oid) || ')'
      WHEN 'd' THEN concat_ws(' ', 'domain over ' || format_type(t.typbasetype, t.typtypmod),
                              CASE WHEN t.typnotnull THEN 'not null' END,
                              'default ' || t.typdefault)
      WHEN 'r' THEN 'range over ' || (SELECT format_type(r.rngsubtype, NULL) FROM pg_range r
                                      WHERE r.rngtypid = t.oid)
      ELSE 'composite (' || (SELECT string_agg(format('%%I %%s', a.attname,
                                  format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
                             FROM pg_attribute a WHERE a.attrelid = t.typrelid
                             AND a.attnum > 0 AND NOT a.attisdropped) || ')'
    END
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND
       (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  AND {_SCOPE} AND {_not_member("pg_type", "t.oid")}""",
    "domain constraint": f"""
SELECT format('"%%s"."%%s"', replace(n.nspname, '"', '""'), replace(t.typname, '"', '""'))
       || '.' || format('"%%s"', replace(k.conname, '"', '""')),
    concat_ws(' ', pg_get_constraintdef(k.oid), CASE WHEN NOT k.convalidated THEN '(NOT VALID)' END)
FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {_SCOPE} AND {_not_member("pg_type", "t.oid")}""",
    "extension": """
SELECT format('"%%s"', x.extname), 'schema ' || x.extnamespace::regnamespace::text
FROM pg_extension x""",
    "event trigger": """
SELECT format('"%%s"', replace(v.evtname, '"', '""')),
    concat_ws(' ', 'on ' || v.evtevent, 'execute ' || v.evtfoid::regprocedure::text,
              'tags ' || array_to_string(v.evttags, ','), 'enabled=' || v.evtenabled::text)
FROM pg_event_trigger v""",
    "database": """
SELECT 'comment', shobj_description(d.oid, 'pg_database') FROM pg_database d
WHERE d.datname = current_database() AND shobj_description(d.oid, 'pg_database') IS NOT NULL""",
}

# Sequences whose value is read (each read takes a lock: done in small batches).
SEQUENCES_SQL: Final = f"""
SELECT n.nspname, c.relname, {_LABEL}, s.seqincrement FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_REL_SCOPE} AND has_table_privilege(c.oid, 'SELECT')"""

Inventory = dict[str, dict[str, str]]


def take_inventory(cur: Any, schemas: list[str], exclude: list[str]) -> Inventory:
    """Every category's objects as the cursor's snapshot (and the server's deparser) sees them.

    The session must have ``core.fingerprint.SESSION_SETTINGS`` pinned (search_path decides
    how names are qualified in definitions). PostgreSQL's deparsers (``pg_get_expr``,
    ``pg_get_indexdef``...) briefly lock the table they describe: on a live source, take the
    inventory once pg_dump holds its locks, when no session can hold an exclusive one.
    """
    params = {"schemas": schemas, "exclude": exclude}
    found: Inventory = {}
    for category, query in INVENTORY_SQL.items():
        cur.execute(query, params)
        found[category] = {str(key): str(detail or "") for key, detail in cur.fetchall()}
    return found


def sequence_values(
    cur: Any, schemas: list[str], exclude: list[str], batch: int = 200
) -> dict[str, int]:
    """The next value each readable sequence would hand out now (reads are not transactional).

    Reads ``last_value, is_called`` of at most ``batch`` sequences per statement, so that no
    statement holds many locks. Run it in autocommit mode with a short ``lock_timeout``: a
    sequence locked by DDL (being altered or dropped) is left out rather than waited for.
    """
    from psycopg import errors, sql

    cur.execute(SEQUENCES_SQL, {"schemas": schemas, "exclude": exclude})
    listed = [(str(s), str(n), str(label), int(step)) for s, n, label, step in cur.fetchall()]
    values: dict[str, int] = {}

    def read(chunk: list[tuple[str, str, str, int]]) -> None:
        cur.execute(
            sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {}::int, last_value, is_called FROM {}").format(
                    sql.Literal(index), sql.Identifier(schema, name)
                )
                for index, (schema, name, _, _) in enumerate(chunk)
            )
        )
        for index, last_value, is_called in cur.fetchall():
            _, _, label, step = chunk[index]
            values[label] = int(last_value) + (step if is_called else 0)

    for start in range(0, len(listed), batch):
        chunk = listed[start : start + batch]
        try:
            read(chunk)
        except (errors.LockNotAvailable, errors.UndefinedTable):
            for one in chunk:  # find the locked (or just dropped) one(s), keep the rest
                try:
                    read([one])
                except (errors.LockNotAvailable, errors.UndefinedTable):
                    continue
    return values


Problem = Literal["missing", "extra", "different", "value"]


@dataclass(frozen=True)
class ObjectDifference:
    """One object whose restored state differs from the dump's snapshot."""

    category: str
    key: str
    problem: Problem
    expected: str | None = None
    restored: str | None = None

    def describe(self) -> str:
        """One line naming the object and what is wrong with it."""
        if self.problem == "missing":
            return f"{self.category} {self.key}: missing after the restore"
        if self.problem == "extra":
            return f"{self.category} {self.key}: not in the snapshot, present after the restore"
        return f"{self.category} {self.key}: snapshot {self.expected!r}, restored {self.restored!r}"


@dataclass(frozen=True)
class ObjectComparison:
    """Objects compared, what differs, what only warns, and what could not be restored."""

    checked: int
    differences: list[ObjectDifference]
    warnings: list[ObjectDifference]
    # Objects the restoring login may not create: (category, key).
    not_restorable: list[tuple[str, str]]
    sequences_checked: int

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences


def compare_inventories(
    expected: Inventory,
    restored: Inventory,
    sequences: tuple[dict[str, int], dict[str, int]] | None,
    restored_sequences: dict[str, int] | None,
    superuser: bool,
) -> ObjectComparison:
    """Name every object missing, extra or different after the restore.

    :param sequences: the source's next values before and after pg_dump ran (None: not read)
    :param restored_sequences: the restored database's next values
    :param superuser: the restoring login may create superuser-only objects; when it may not,
        those objects are reported as not restorable instead of missing
    """
    differences: list[ObjectDifference] = []
    warnings: list[ObjectDifference] = []
    not_restorable: list[tuple[str, str]] = []
    checked = 0
    for category in CATEGORIES:
        want, got = expected.get(category), restored.get(category, {})
        if want is None:  # a set written before this category was recorded
            continue
        for key in sorted(want.keys() | got.keys()):
            before, after = want.get(key), got.get(key)
            if (
                before is not None
                and after is None
                and category in SUPERUSER_ONLY
                and not superuser
            ):
                not_restorable.append((category, key))
                continue
            checked += before is not None
            if before == after:
                continue
            problem: Problem = (
                "missing" if after is None else "extra" if before is None else "different"
            )
            diff = ObjectDifference(category, key, problem, before, after)
            (warnings if category in DATABASE_PROPERTIES else differences).append(diff)
    sequences_checked = 0
    if sequences is not None and restored_sequences is not None:
        before_dump, after_dump = sequences
        for label, start in sorted(before_dump.items()):
            end = after_dump.get(label, start)
            low, high = min(start, end), max(start, end)
            value = restored_sequences.get(label)
            if value is None:
                continue  # the sequence itself is compared above
            sequences_checked += 1
            if not low <= value <= high:
                expected_text = f"next value {low}" if low == high else f"next value {low}..{high}"
                differences.append(
                    ObjectDifference(
                        "sequence", label, "value", expected_text, f"next value {value}"
                    )
                )
    return ObjectComparison(checked, differences, warnings, not_restorable, sequences_checked)


def format_object_differences(items: list[ObjectDifference]) -> str:
    """A fixed-width table of object differences for a log or an email."""
    width = max([len("object")] + [len(d.key) for d in items])
    kind = max([len("kind")] + [len(d.category) for d in items])
    lines = [f"{'kind':<{kind}}  {'object':<{width}}  problem"]
    for d in items:
        if d.problem in ("missing", "extra"):
            what = (
                "missing after the restore" if d.problem == "missing" else "extra after the restore"
            )
        else:
            what = f"snapshot {d.expected!r} / restored {d.restored!r}"
        lines.append(f"{d.category:<{kind}}  {d.key:<{width}}  {what}")
    return "\n".join(lines)
