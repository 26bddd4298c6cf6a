"""The source database as it was, apart from its rows: locale, settings, roles, owners, grants.

Pure: the model captured at dump time (inside the dump's snapshot), the catalog SQL that reads
it, and the comparison that proves a restored database equal to it (``core.dbsql`` holds the
SQL that makes it again on another server). Everything is read from catalogs any login may read
(``pg_database``, ``pg_roles``, ``pg_auth_members``, ``pg_db_role_setting``, ``pg_shdepend``),
so a backup login without superuser (``pg_read_all_data`` on a managed service) captures it
all; no password hash is ever read (``pg_roles`` shows none), as ``--no-role-passwords``.

Where it goes in a set: the locale in the plaintext manifest (``database``), so a restore by hand
can create the database before anything is decrypted; the rest in the encrypted table document
(``globals``), and as a psql script, ``globals.sql.age``, for the restore with stock tools.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Provider = Literal["libc", "icu", "builtin"]
_PROVIDERS: dict[str, Provider] = {"c": "libc", "i": "icu", "b": "builtin"}

# Predefined roles (pg_read_all_data, pg_database_owner...) have OIDs below this and names
# starting with pg_: every server has its own, so they are referred to, never created. The
# bootstrap superuser is below it too, but its name differs between servers: a role like others.
FIRST_NORMAL_OID = 16384


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseLocale(_Model):
    """Encoding and locale of a database, as ``pg_database`` records them.

    ``provider_locale`` is the ICU locale (``ICU_LOCALE``) of an ICU database, or the
    ``BUILTIN_LOCALE`` of a PostgreSQL 17 builtin one. ``collation_version`` is informational:
    the target's library decides its own, and a difference is reported, not refused.
    """

    encoding: str
    locale_provider: Provider = "libc"
    collate: str
    ctype: str
    provider_locale: str | None = None
    icu_rules: str | None = None
    collation_version: str | None = None

    @classmethod
    def from_catalog(cls, encoding: str, row: dict[str, Any]) -> DatabaseLocale:
        """From ``to_jsonb(pg_database)``: any PostgreSQL version's columns (12 to 17)."""
        provider = _PROVIDERS.get(str(row.get("datlocprovider") or "c"), "libc")
        return cls(
            encoding=encoding,
            locale_provider=provider,
            collate=str(row["datcollate"]),
            ctype=str(row["datctype"]),
            provider_locale=(row.get("datlocale") or row.get("daticulocale"))
            if provider != "libc"
            else None,
            icu_rules=row.get("daticurules") or None,
            collation_version=row.get("datcollversion") or None,
        )

    def describe(self) -> str:
        """``UTF8, ICU locale en-US, LC_COLLATE C.UTF-8, LC_CTYPE C.UTF-8`` for messages."""
        parts = [self.encoding]
        if self.locale_provider != "libc":
            label = "ICU" if self.locale_provider == "icu" else "builtin"
            parts.append(f"{label} locale {self.provider_locale}")
        if self.icu_rules:
            parts.append(f"ICU rules {self.icu_rules!r}")
        parts += [f"LC_COLLATE {self.collate}", f"LC_CTYPE {self.ctype}"]
        return ", ".join(parts)

    def differences(self, other: DatabaseLocale) -> list[str]:
        """What differs from ``other`` (collation versions aside)."""
        fields = ("encoding", "locale_provider", "collate", "ctype", "provider_locale", "icu_rules")
        return [
            f"{name} {getattr(self, name)!r}, restored {getattr(other, name)!r}"
            for name in fields
            if getattr(self, name) != getattr(other, name)
        ]


class Role(_Model):
    """A role the database needs, with its attributes; never a password."""

    name: str
    superuser: bool = False
    inherit: bool = True
    createrole: bool = False
    createdb: bool = False
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    valid_until: str | None = None
    settings: list[str] = Field(default_factory=list)
    comment: str | None = None
    builtin: bool = False  # a predefined pg_* role

    def attributes(self) -> dict[str, Any]:
        """The attributes compared between servers (name, settings and comment aside)."""
        return self.model_dump(
            include={
                "superuser",
                "inherit",
                "createrole",
                "createdb",
                "login",
                "replication",
                "bypassrls",
                "connection_limit",
                "valid_until",
            }
        )


class Membership(_Model):
    """``GRANT role TO member``, with or without the admin option."""

    role: str
    member: str
    admin_option: bool = False


class RoleSettings(_Model):
    """``ALTER ROLE role IN DATABASE <this database> SET ...``: settings as ``name=value``."""

    role: str
    settings: list[str]


class ObjectGrants(_Model):
    """Owner and ACL of one object in the database (``acl`` None: the default privileges)."""

    kind: str
    name: str
    owner: str | None
    acl: list[str] | None = None

    @property
    def label(self) -> str:
        """``table app.codes``."""
        return f"{self.kind} {self.name}"


class DatabaseGlobals(_Model):
    """Everything of a database besides its objects and rows, captured in the dump's snapshot."""

    format: Literal[1] = 1
    database: str
    locale: DatabaseLocale
    owner: str
    acl: list[str] | None = None
    settings: list[str] = Field(default_factory=list)
    comment: str | None = None
    roles: list[Role] = Field(default_factory=list)
    memberships: list[Membership] = Field(default_factory=list)
    role_settings: list[RoleSettings] = Field(default_factory=list)
    objects: list[ObjectGrants] = Field(default_factory=list)

    def role(self, name: str) -> Role | None:
        """The captured role of that name, if any."""
        return next((r for r in self.roles if r.name == name), None)

    def creatable_roles(self) -> list[Role]:
        """Roles a restore may have to create: all but the ones initdb makes."""
        return [r for r in self.roles if not r.builtin]


def parse_aclitem(item: str) -> tuple[str, str, str]:
    """``grantee=privs/grantor`` (names possibly quoted; PUBLIC's grantee is empty)."""

    def name(text: str, pos: int, stop: str) -> tuple[str, int]:
        if pos < len(text) and text[pos] == '"':
            out, pos = [], pos + 1
            while True:
                close = text.index('"', pos)
                out.append(text[pos:close])
                if text[close + 1 : close + 2] == '"':
                    out.append('"')
                    pos = close + 2
                    continue
                return "".join(out), close + 1
        end = text.find(stop, pos) if stop else len(text)
        end = len(text) if end < 0 else end
        return text[pos:end], end

    grantee, pos = name(item, 0, "=")
    privs_end = item.index("/", pos + 1)
    privs = item[pos + 1 : privs_end]
    grantor, _ = name(item, privs_end + 1, "")
    return grantee, privs, grantor


def acl_roles(acl: list[str] | None) -> set[str]:
    """Every role named in an ACL (grantees and grantors; PUBLIC is not a role)."""
    names: set[str] = set()
    for item in acl or []:
        grantee, _, grantor = parse_aclitem(item)
        names.update(n for n in (grantee, grantor) if n)
    return names


# --- catalog SQL (psycopg parameters; any login may read these catalogs) ------------------

DATABASE_SQL = """
SELECT pg_encoding_to_char(d.encoding), to_jsonb(d) - 'datacl', pg_get_userbyid(d.datdba),
       d.datacl::text[], shobj_description(d.oid, 'pg_database'),
       (SELECT s.setconfig FROM pg_db_role_setting s
         WHERE s.setdatabase = d.oid AND s.setrole = 0)
FROM pg_database d WHERE d.datname = current_database()
"""

# Owners and ACLs of the objects pg_dump writes: in the dump's schemas, not members of an
# extension (pg_dump leaves those to CREATE EXTENSION), not in system schemas.
OBJECTS_SQL = r"""
WITH ns AS (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n
    WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
      AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
      AND NOT (n.nspname = ANY(%(exclude)s::text[]))
), ext AS (
    SELECT classid, objid FROM pg_depend WHERE deptype = 'e'
), rel AS (
    SELECT c.oid, c.relname, c.relkind, c.relowner, c.relacl, ns.nspname FROM pg_class c
    JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND c.relpersistence <> 't'
      AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_class'::regclass AND objid = c.oid)
)
SELECT 'schema', quote_ident(nspname), pg_get_userbyid(nspowner), nspacl::text[] FROM ns
UNION ALL
SELECT CASE relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                    WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                    WHEN 'c' THEN 'type' ELSE 'table' END,
       format('%%I.%%I', nspname, relname), pg_get_userbyid(relowner), relacl::text[]
FROM rel
UNION ALL
SELECT 'column', format('%%I.%%I.%%I', rel.nspname, rel.relname, a.attname), NULL,
       a.attacl::text[]
FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       format('%%I.%%I(%%s)', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       pg_get_userbyid(p.proowner), p.proacl::text[]
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_proc'::regclass AND objid = p.oid)
UNION ALL
SELECT 'type', format('%%I.%%I', ns.nspname, t.typname), pg_get_userbyid(t.typowner),
       t.typacl::text[]
FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE (t.typtype IN ('d', 'e', 'r') OR (t.typtype = 'b' AND t.typcategory <> 'A'))
  AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_type'::regclass AND objid = t.oid)
UNION ALL
SELECT 'default privileges',
       format('FOR ROLE %%I%%s ON %%s', pg_get_userbyid(d.defaclrole),
              CASE WHEN d.defaclnamespace = 0 THEN ''
                   ELSE format(' IN SCHEMA %%I', ns.nspname) END,
              CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                   WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END),
       pg_get_userbyid(d.defaclrole), d.defaclacl::text[]
FROM pg_default_acl d LEFT JOIN ns ON ns.oid = d.defaclnamespace
WHERE (d.defaclnamespace = 0 AND cardinality(%(schemas)s::text[]) = 0) OR ns.oid IS NOT NULL
UNION ALL
SELECT 'large object', l.oid::text, pg_get_userbyid(l.lomowner), l.lomacl::text[]
FROM pg_largeobject_metadata l
UNION ALL
SELECT 'foreign-data wrapper', quote_ident(w.fdwname), pg_get_userbyid(w.fdwowner),
       w.fdwacl::text[]
FROM pg_foreign_data_wrapper w
WHERE NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_foreign_data_wrapper'::regclass
                  AND objid = w.oid)
UNION ALL
SELECT 'server', quote_ident(s.srvname), pg_get_userbyid(s.srvowner), s.srvacl::text[]
FROM pg_foreign_server s
WHERE NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_foreign_server'::regclass
                  AND objid = s.oid)
ORDER BY 1, 2
"""

# The roles the database needs: named by its objects (owners, grantees), by anything else in it
# that depends on a role (pg_shdepend: policies, ownership of every other object kind), by its
# role settings; then, transitively, their members. pg_roles never shows a password.
ROLES_SQL = """
WITH RECURSIVE db AS (
    SELECT oid FROM pg_database WHERE datname = current_database()
), direct AS (
    SELECT r.oid FROM pg_roles r WHERE r.rolname = ANY(%(names)s::text[])
    UNION SELECT s.refobjid FROM pg_shdepend s, db
     WHERE s.dbid = db.oid AND s.refclassid = 'pg_authid'::regclass
    UNION SELECT s.setrole FROM pg_db_role_setting s, db
     WHERE s.setdatabase = db.oid AND s.setrole <> 0
), needed AS (
    SELECT oid FROM direct
    UNION SELECT m.member FROM pg_auth_members m JOIN needed n ON m.roleid = n.oid
)
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text, r.rolconfig,
       shobj_description(r.oid, 'pg_authid'),
       r.oid < %(first_normal)s AND r.rolname LIKE 'pg\\_%%'
FROM pg_roles r WHERE r.oid IN (SELECT oid FROM needed)
ORDER BY r.rolname
"""

MEMBERSHIPS_SQL = """
SELECT g.rolname, m.rolname, a.admin_option
FROM pg_auth_members a
JOIN pg_roles g ON g.oid = a.roleid
JOIN pg_roles m ON m.oid = a.member
WHERE m.rolname = ANY(%(names)s::text[])
  AND (g.rolname = ANY(%(names)s::text[]) OR g.oid < %(first_normal)s)
ORDER BY 1, 2
"""

ROLE_SETTINGS_SQL = """
SELECT pg_get_userbyid(s.setrole), s.setconfig FROM pg_db_role_setting s
JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database() AND s.setrole <> 0
ORDER BY 1
"""


def objects_from_rows(rows: list[tuple[Any, ...]]) -> list[ObjectGrants]:
    """OBJECTS_SQL rows as records (ACLs in catalog order; comparisons ignore the order)."""
    return [
        ObjectGrants(kind=kind, name=name, owner=owner, acl=list(acl) if acl is not None else None)
        for kind, name, owner, acl in rows
    ]


def roles_from_rows(rows: list[tuple[Any, ...]]) -> list[Role]:
    """ROLES_SQL rows as records."""
    return [
        Role(
            name=row[0],
            superuser=row[1],
            inherit=row[2],
            createrole=row[3],
            createdb=row[4],
            login=row[5],
            replication=row[6],
            bypassrls=row[7],
            connection_limit=row[8],
            valid_until=row[9],
            settings=list(row[10] or []),
            comment=row[11],
            builtin=row[12],
        )
        for row in rows
    ]


def referenced_roles(owner: str, acl: list[str] | None, objects: list[ObjectGrants]) -> list[str]:
    """Roles named by the database and its objects: owners, grantees, grantors."""
    names = {owner} | acl_roles(acl)
    for obj in objects:
        if obj.owner:
            names.add(obj.owner)
        names |= acl_roles(obj.acl)
    return sorted(names)


# --- the comparison that proves a restore -------------------------------------------------


class Comparison(_Model):
    """What differs between the source as captured and a restored database.

    ``differences``: locale, database settings, comment, objects missing (any restore must
    bring these back). ``ownership``: owners, grants, roles, memberships and role settings
    (only a restore with roles brings these back); ``lost`` counts the objects, the database
    included, whose owner or grants differ. ``notes`` fail nothing: a role that existed before
    the restore is never altered, so its attributes may differ; a collation version is the
    target library's own.
    """

    differences: list[str]
    ownership: list[str]
    lost: int
    notes: list[str]
    objects: int

    def failures(self, owners: bool) -> list[str]:
        """What fails a restore that set out to bring back owners and grants, or not."""
        return self.differences + (self.ownership if owners else [])


def compare(
    source: DatabaseGlobals, restored: DatabaseGlobals, created: set[str] | None = None
) -> Comparison:
    """Compare a restored database with the source as captured.

    :param created: roles the restore created; differences of the others are notes
    """
    diffs = [f"database locale: {d}" for d in source.locale.differences(restored.locale)]
    notes: list[str] = []
    if source.locale.collation_version != restored.locale.collation_version:
        notes.append(
            f"collation version {source.locale.collation_version!r} on the source, "
            f"{restored.locale.collation_version!r} here: the same locale, another library "
            "version (sort order may differ in rare cases)"
        )
    if sorted(source.settings) != sorted(restored.settings):
        diffs.append(f"database settings: {source.settings}, restored {restored.settings}")
    if source.comment != restored.comment:
        diffs.append(f"database comment: {source.comment!r}, restored {restored.comment!r}")
    owned: list[str] = []
    lost: set[str] = set()
    if source.owner != restored.owner:
        owned.append(f"database owner: {source.owner}, restored {restored.owner}")
        lost.add("database")
    if _acl(source.acl) != _acl(restored.acl):
        owned.append(f"database grants: {source.acl}, restored {restored.acl}")
        lost.add("database")
    want = {s.role: sorted(s.settings) for s in source.role_settings}
    got = {s.role: sorted(s.settings) for s in restored.role_settings}
    for name in sorted(want.keys() | got.keys()):
        if want.get(name) != got.get(name):
            owned.append(
                f"settings of role {name} in the database: {want.get(name, [])}, "
                f"restored {got.get(name, [])}"
            )
    created = created or set()
    for role in source.creatable_roles():
        there = restored.role(role.name)
        if there is None:
            owned.append(f"role {role.name}: missing")
        elif there.attributes() != role.attributes() or there.settings != role.settings:
            line = f"role {role.name}: {_role_diff(role, there)}"
            if role.name in created:
                owned.append(line)
            else:
                notes.append(line + " (it existed before: left as it is)")
    have = {(m.role, m.member) for m in restored.memberships}
    for m in source.memberships:
        if (m.role, m.member) not in have and restored.role(m.member) is not None:
            line = f"membership of {m.member} in {m.role}: missing"
            if m.member in created:
                owned.append(line)
            else:
                notes.append(line + f" ({m.member} existed before: left as it is)")
    before = {(o.kind, o.name): o for o in source.objects}
    after = {(o.kind, o.name): o for o in restored.objects}
    for key in sorted(before.keys() | after.keys()):
        b, a = before.get(key), after.get(key)
        label = f"{key[0]} {key[1]}"
        if b is None:
            diffs.append(f"{label}: not in the source")
        elif a is None and b.owner is not None and b.kind != "default privileges":
            diffs.append(f"{label}: missing")
        elif a is None:  # grants of a column, or default privileges: all of it is grants
            owned.append(f"{label}: grants {b.acl}, restored none")
            lost.add(label)
        else:
            if b.owner != a.owner:
                owned.append(f"{label}: owner {b.owner}, restored {a.owner}")
                lost.add(label)
            if _acl(b.acl) != _acl(a.acl):
                owned.append(f"{label}: grants {b.acl}, restored {a.acl}")
                lost.add(label)
    return Comparison(
        differences=diffs, ownership=owned, lost=len(lost), notes=notes, objects=len(before) + 1
    )


def _acl(acl: list[str] | None) -> list[str] | None:
    return sorted(acl) if acl is not None else None


def _role_diff(want: Role, got: Role) -> str:
    a, b = want.attributes(), got.attributes()
    parts = [f"{k} {a[k]!r}, here {b[k]!r}" for k in a if a[k] != b[k]]
    if want.settings != got.settings:
        parts.append(f"settings {want.settings}, here {got.settings}")
    return "; ".join(parts)
