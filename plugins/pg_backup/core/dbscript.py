r"""``globals.sql``: the roles and database settings of a set, as a psql script for stock tools.

The restore by hand runs it with psql after creating the database and before ``pg_restore``::

    psql -X -d postgres -v ON_ERROR_STOP=1 -v db=<restored database> -f globals.sql

It does what ``pg-backup restore --roles`` does before and around its ``pg_restore``, with the
same statements (``core.dbprops`` builds both): in one transaction, create the roles the
database needs that the server lacks (never altering or dropping one that exists; without
passwords), grant the memberships and settings of the roles it created, then give the database
the source's owner, grants, settings and comment. Names never appear in ``--`` comments: a
newline in a name would end the comment (the reason pg_dump 15.14 added ``\restrict``).
"""

from __future__ import annotations

from pg_backup.core.dbprops import (
    DatabaseGlobals,
    Role,
)
from pg_backup.core.dbsql import (
    create_role_sql,
    database_owner_sql,
    database_settings_sql,
    grant_role_sql,
    literal,
    role_in_database_sql,
    role_statements,
)

# psql interpolates the restored database's name here, quoted as an identifier.
_PSQL_DB = ':"db"'
# Inside DO blocks (where psql does not interpolate), the name comes from this setting.
_DB_SETTING = "pg_backup.db"
_CREATED = "pg_backup_created"


def _dollar_tag(body: str) -> str:
    """A dollar-quote tag the body does not contain."""
    n = 0
    while f"$pgb{n or ''}$" in body:
        n += 1
    return f"$pgb{n or ''}$"


def _do(body: str) -> str:
    tag = _dollar_tag(body)
    return f"DO {tag}\nBEGIN\n{body}\nEND\n{tag};"


def _notice(text: str, *args: str) -> str:
    return f"RAISE NOTICE {literal(text)}{''.join(', ' + literal(a) for a in args)};"


def _role_block(role: Role) -> str:
    name = literal(role.name)
    full, _ = create_role_sql(role, superuser=True)
    reduced, dropped = create_role_sql(role, superuser=False)
    lines = [
        f"IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {name}) THEN",
        "  " + _notice("role % exists: left as it is", role.name),
        "  RETURN;",
        "END IF;",
    ]
    if dropped:
        lines += [
            "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN",
            f"  {full};",
            "ELSE",
            f"  {reduced};",
            "  "
            + _notice(
                "role % created without %: only a superuser may give that",
                role.name,
                " ".join(dropped),
            ),
            "END IF;",
        ]
    else:
        lines.append(f"{full};")
    lines += [f"{sql};" for sql in role_statements(role)]
    lines.append(f"INSERT INTO {_CREATED} VALUES ({name});")
    if role.login:
        lines.append(
            _notice(
                "created role %: it may log in; give it a password first (ALTER ROLE ... PASSWORD)",
                role.name,
            )
        )
    else:
        lines.append(_notice("created role %", role.name))
    return _do("\n".join(lines))


def _if_created(member: str, statement: str, otherwise: str) -> str:
    return _do(
        f"IF EXISTS (SELECT FROM {_CREATED} WHERE role = {literal(member)}) THEN\n"
        f"  {statement}\nELSE\n  {otherwise}\nEND IF;"
    )


def render_script(doc: DatabaseGlobals, backup_id: str) -> str:
    """The psql script of one set (see the module's docstring)."""
    out = [
        f"-- globals.sql of backup {backup_id}: the roles the database needs and its owner,",
        "-- grants, settings and comment. Made by pg_backup; run it with psql 10 or newer after",
        "-- creating the database, before pg_restore:",
        "--   psql -X -d postgres -v ON_ERROR_STOP=1 -v db=<restored database> -f globals.sql",
        "-- Roles the server lacks are created without passwords (a backup holds none); a role",
        "-- that exists is never altered. One transaction: all of it, or nothing.",
        r"\if :{?db}",
        r"\else",
        _do(
            "RAISE EXCEPTION 'globals.sql: name the restored database: "
            "psql -v db=NAME -f globals.sql';"
        ),
        r"\endif",
        "SET client_encoding = 'UTF8';",
        "SET client_min_messages = notice;",
        "SET standard_conforming_strings = on;",
        "BEGIN;",
        f"SET LOCAL {_DB_SETTING} = :'db';",
        f"CREATE TEMP TABLE {_CREATED} (role text PRIMARY KEY) ON COMMIT DROP;",
        "",
        "-- Roles",
    ]
    out += [_role_block(role) for role in doc.creatable_roles()]
    if doc.memberships:
        out += ["", "-- Memberships of the roles created above"]
    for m in doc.memberships:
        out.append(
            _if_created(
                m.member,
                grant_role_sql(m) + ";",
                _notice(
                    "membership of % in % not granted: % existed before",
                    m.member,
                    m.role,
                    m.member,
                ),
            )
        )
    if doc.role_settings:
        out += ["", "-- Settings of the roles created above, in this database"]
    for rs in doc.role_settings:
        for item in rs.settings:
            # %I is filled by format() with the database named in pg_backup.db.
            template = role_in_database_sql(rs.role, "\x00", item).replace("%", "%%")
            statement = (
                f"EXECUTE format({literal(template.replace(chr(0), '%I'))}, "
                f"current_setting({literal(_DB_SETTING)}));"
            )
            out.append(
                _if_created(
                    rs.role,
                    statement,
                    _notice(
                        "setting % of role % in the database not applied: % existed before",
                        item.partition("=")[0],
                        rs.role,
                        rs.role,
                    ),
                )
            )
    out += ["", "-- The database"]
    out += [f"{sql};" for sql in database_owner_sql(_PSQL_DB, doc)]
    out += [f"{sql};" for sql in database_settings_sql(_PSQL_DB, doc)]
    out += ["COMMIT;", ""]
    return "\n".join(out)
