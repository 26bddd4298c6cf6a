"""The SQL that makes the source database's locale, settings and roles again elsewhere.

Pure text builders over ``core.dbprops``'s model, quoted the way pg_dump quotes them: used by
``pg-backup restore`` and the drill (through psycopg) and by the psql script ``globals.sql``
(``core.dbscript``), so both run the same statements. Also the checks that refuse, before
anything is created, a server that cannot hold the source's locale.
"""

from __future__ import annotations

import re

from pg_backup.core.dbprops import (
    DatabaseGlobals,
    DatabaseLocale,
    Membership,
    Role,
    parse_aclitem,
)
from pg_backup.core.errors import RestoreError

# Settings whose value is a list of identifiers: PostgreSQL stores them already quoted, and
# pg_dump re-quotes each element as a literal (variable_is_guc_list_quote in pg_dump).
_LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)

# Attributes only a superuser may give a role.
SUPERUSER_ONLY = ("superuser", "replication", "bypassrls")

# Privilege letters of a database's ACL (aclitem), as GRANT spells them.
_DATABASE_PRIVILEGES = {"C": "CREATE", "T": "TEMPORARY", "c": "CONNECT"}


def ident(name: str) -> str:
    """An SQL identifier, always double-quoted (quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """An SQL string literal for a session with ``standard_conforming_strings = on``."""
    return "'" + value.replace("'", "''") + "'"


def split_guc_list(raw: str) -> list[str] | None:
    """Split a stored list setting (``app, "my schema"``) into its elements; None if malformed.

    A port of SplitGUCList (PostgreSQL's fe_utils/string_utils.c): elements separated by
    commas, optionally double-quoted (``""`` inside quotes is one quote), spaces trimmed,
    unquoted elements kept as written.
    """
    items: list[str] = []
    pos, end = 0, len(raw)

    def skip_space(i: int) -> int:
        while i < end and raw[i].isspace():
            i += 1
        return i

    pos = skip_space(pos)
    if pos == end:
        return items
    while True:
        if raw[pos] == '"':
            name, pos = [], pos + 1
            while True:
                close = raw.find('"', pos)
                if close < 0:
                    return None
                name.append(raw[pos:close])
                if close + 1 < end and raw[close + 1] == '"':
                    name.append('"')
                    pos = close + 2
                    continue
                pos = close + 1
                break
            items.append("".join(name))
        else:
            start = pos
            while pos < end and raw[pos] != "," and not raw[pos].isspace():
                pos += 1
            if pos == start:
                return None
            items.append(raw[start:pos])
        pos = skip_space(pos)
        if pos == end:
            return items
        if raw[pos] != ",":
            return None
        pos = skip_space(pos + 1)


def split_setting(item: str) -> tuple[str, str]:
    """``search_path=app, public`` into name and stored value."""
    name, _, value = item.partition("=")
    return name, value


def set_clause(item: str) -> str:
    """``SET "search_path" TO 'app', 'public'`` for one stored ``name=value`` setting.

    Quoted as pg_dump quotes it (makeAlterConfigCommand): list settings element by element,
    every other value as one literal.
    """
    name, value = split_setting(item)
    if name.lower() in _LIST_SETTINGS:
        elements = split_guc_list(value)
        if elements is not None:
            return f"SET {ident(name)} TO " + ", ".join(literal(e) for e in elements)
    return f"SET {ident(name)} TO {literal(value)}"


def create_database_sql(name: str, loc: DatabaseLocale) -> str:
    """``CREATE DATABASE`` with exactly the source's encoding, provider and locales."""
    sql = (
        f"CREATE DATABASE {ident(name)} TEMPLATE template0 ENCODING {literal(loc.encoding)} "
        f"LC_COLLATE {literal(loc.collate)} LC_CTYPE {literal(loc.ctype)}"
    )
    if loc.locale_provider == "icu":
        sql += f" LOCALE_PROVIDER icu ICU_LOCALE {literal(loc.provider_locale or '')}"
    elif loc.locale_provider == "builtin":
        sql += f" LOCALE_PROVIDER builtin BUILTIN_LOCALE {literal(loc.provider_locale or '')}"
    if loc.icu_rules:
        sql += f" ICU_RULES {literal(loc.icu_rules)}"
    return sql


def check_target_server(loc: DatabaseLocale, server: str, major: int, has_icu: bool) -> None:
    """Refuse, before anything is created, a server that cannot hold the source's locale.

    :param server: the server as messages name it (``user@host:port``)
    :param major: its major version; ``has_icu``: it was built with ICU
    :raises RestoreError: naming what is missing and how to get it
    """
    need = {"icu": 15, "builtin": 17}.get(loc.locale_provider, 0)
    if loc.icu_rules:
        need = max(need, 16)
    if major < need:
        raise RestoreError(
            f"the source database is {loc.describe()}; PostgreSQL {major} on {server} cannot "
            f"create such a database (PostgreSQL {need} or newer can): restore onto a newer server"
        )
    if loc.locale_provider == "icu" and not has_icu:
        raise RestoreError(
            f"the source database uses the ICU locale {loc.provider_locale!r}, but the server "
            f"{server} was built without ICU: install a PostgreSQL built with ICU (the PGDG and "
            "Debian packages are) or restore onto a server that has it"
        )


_MISSING_LOCALE = re.compile(r'(?:invalid locale name:|could not create locale) "([^"]+)"')


def missing_locale(message: str) -> str | None:
    """The locale a PostgreSQL error says the server lacks, if it says so."""
    found = _MISSING_LOCALE.search(message)
    return found.group(1) if found else None


def locale_error(loc: DatabaseLocale, server: str, message: str) -> RestoreError:
    """The refusal for a ``CREATE DATABASE`` the server rejected for its locale or encoding."""
    missing = missing_locale(message)
    if missing:
        return RestoreError(
            f"the server {server} lacks the locale {missing!r} of the source database "
            f"({loc.describe()}): install it on that server's operating system (Debian: "
            f"uncomment it in /etc/locale.gen and run locale-gen, or install locales-all; no "
            "restart needed), or restore onto a server that has it. Nothing was restored"
        )
    return RestoreError(
        f"the server {server} cannot create a database as the source was ({loc.describe()}): "
        f"{message.strip()}. Install the locale with the source's character set there, or "
        "restore onto a server that has it. Nothing was restored"
    )


def probe_locale_sql(loc: DatabaseLocale) -> str | None:
    """A temporary collation that loads the source's libc locales, or None when they are C.

    PostgreSQL loads a locale when a collation is created, so this proves the server's
    operating system has it, without creating a database (run it in a transaction, roll back).
    """
    if {loc.collate, loc.ctype} <= {"C", "POSIX"}:
        return None
    return (
        f"CREATE COLLATION pg_temp.pg_backup_probe (LC_COLLATE = {literal(loc.collate)}, "
        f"LC_CTYPE = {literal(loc.ctype)})"
    )


def create_role_sql(role: Role, superuser: bool) -> tuple[str, list[str]]:
    """``CREATE ROLE`` with the role's attributes; and the attributes left out.

    :param superuser: the restoring login is a superuser; if not, attributes only a superuser
        may give (SUPERUSER, REPLICATION, BYPASSRLS) are left out and returned
    """
    flags = {
        "superuser": "SUPERUSER",
        "inherit": "INHERIT",
        "createrole": "CREATEROLE",
        "createdb": "CREATEDB",
        "login": "LOGIN",
        "replication": "REPLICATION",
        "bypassrls": "BYPASSRLS",
    }
    words, dropped = [], []
    for field, word in flags.items():
        on = bool(getattr(role, field))
        if on and field in SUPERUSER_ONLY and not superuser:
            dropped.append(word)
            on = False
        words.append(word if on else f"NO{word}")
    sql = f"CREATE ROLE {ident(role.name)} WITH {' '.join(words)}"
    if role.connection_limit != -1:
        sql += f" CONNECTION LIMIT {int(role.connection_limit)}"
    if role.valid_until:
        sql += f" VALID UNTIL {literal(role.valid_until)}"
    return sql, dropped


def role_statements(role: Role) -> list[str]:
    """What follows a role's creation: its own settings and its comment."""
    out = [f"ALTER ROLE {ident(role.name)} {set_clause(s)}" for s in role.settings]
    if role.comment is not None:
        out.append(f"COMMENT ON ROLE {ident(role.name)} IS {literal(role.comment)}")
    return out


def grant_role_sql(m: Membership) -> str:
    """``GRANT role TO member [WITH ADMIN OPTION]``."""
    sql = f"GRANT {ident(m.role)} TO {ident(m.member)}"
    return sql + (" WITH ADMIN OPTION" if m.admin_option else "")


def role_in_database_sql(role: str, db_sql: str, item: str) -> str:
    """``ALTER ROLE role IN DATABASE db SET ...`` (``db_sql``: the database, as SQL)."""
    return f"ALTER ROLE {ident(role)} IN DATABASE {db_sql} {set_clause(item)}"


def database_owner_sql(db_sql: str, doc: DatabaseGlobals) -> list[str]:
    """The database's owner and exactly its grants (``db_sql``: the database, as SQL)."""
    return [f"ALTER DATABASE {db_sql} OWNER TO {ident(doc.owner)}"] + database_acl_sql(
        db_sql, doc.owner, doc.acl
    )


def database_acl_sql(target: str, owner: str, acl: list[str] | None) -> list[str]:
    """Statements giving the database ``target`` (as SQL) exactly ``acl``; none for the default."""
    if acl is None:
        return []
    out = [
        f"REVOKE ALL ON DATABASE {target} FROM PUBLIC",
        f"REVOKE ALL ON DATABASE {target} FROM {ident(owner)}",
    ]
    for item in acl:
        grantee, privs, _ = parse_aclitem(item)
        who = ident(grantee) if grantee else "PUBLIC"
        plain = [_DATABASE_PRIVILEGES[c] for c in privs if c in _DATABASE_PRIVILEGES]
        with_option = [
            _DATABASE_PRIVILEGES[c]
            for i, c in enumerate(privs)
            if c in _DATABASE_PRIVILEGES and privs[i + 1 : i + 2] == "*"
        ]
        if plain:
            out.append(f"GRANT {', '.join(plain)} ON DATABASE {target} TO {who}")
        if with_option:
            out.append(
                f"GRANT {', '.join(with_option)} ON DATABASE {target} TO {who} WITH GRANT OPTION"
            )
    return out


def database_settings_sql(db_sql: str, doc: DatabaseGlobals) -> list[str]:
    """The database's own settings and comment (``db_sql``: the database, as SQL)."""
    out = [f"ALTER DATABASE {db_sql} {set_clause(s)}" for s in doc.settings]
    if doc.comment is not None:
        out.append(f"COMMENT ON DATABASE {db_sql} IS {literal(doc.comment)}")
    return out
