"""The database as it was, apart from its rows: read from the catalogs, made again elsewhere.

Reading needs no superuser (``core.dbprops`` says which catalogs and why). Making again, on a
target server: the roles the database needs that the server lacks, created in one transaction
with their attributes, settings and memberships, never altering or dropping a role that exists
and never setting a password.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pg_backup.adapters.staging import write_small
from pg_backup.core import layout
from pg_backup.core.dbprops import (
    DATABASE_SQL,
    FIRST_NORMAL_OID,
    MEMBERSHIPS_SQL,
    OBJECTS_SQL,
    ROLE_SETTINGS_SQL,
    ROLES_SQL,
    DatabaseGlobals,
    DatabaseLocale,
    Membership,
    RoleSettings,
    objects_from_rows,
    referenced_roles,
    roles_from_rows,
)
from pg_backup.core.dbscript import render_script
from pg_backup.core.dbsql import (
    create_role_sql,
    grant_role_sql,
    ident,
    role_statements,
)
from pg_backup.core.errors import RestoreError
from pg_backup.core.records import StagedFile

log = logging.getLogger(__name__)


def read_globals(cur: Any, schemas: list[str], exclude: list[str]) -> DatabaseGlobals:
    """Capture the connected database's locale, settings, roles, owners and grants.

    Read in the cursor's transaction: inside the dump's snapshot, it describes the dump.

    :param cur: a psycopg cursor on the database
    :param schemas: the dump's schemas (empty: all); ``exclude``: schemas it leaves out
    """
    cur.execute(DATABASE_SQL)
    encoding, row, owner, acl, comment, settings = cur.fetchone()
    cur.execute(OBJECTS_SQL, {"schemas": schemas, "exclude": exclude})
    objects = objects_from_rows(cur.fetchall())
    params = {"first_normal": FIRST_NORMAL_OID}
    cur.execute(ROLES_SQL, {**params, "names": referenced_roles(owner, acl, objects)})
    roles = roles_from_rows(cur.fetchall())
    cur.execute(MEMBERSHIPS_SQL, {**params, "names": [r.name for r in roles]})
    memberships = [Membership(role=g, member=m, admin_option=a) for g, m, a in cur.fetchall()]
    cur.execute(ROLE_SETTINGS_SQL)
    role_settings = [RoleSettings(role=r, settings=list(s)) for r, s in cur.fetchall()]
    return DatabaseGlobals(
        database=str(row["datname"]),
        locale=DatabaseLocale.from_catalog(encoding, row),
        owner=owner,
        acl=list(acl) if acl is not None else None,
        settings=list(settings or []),
        comment=comment,
        roles=roles,
        memberships=memberships,
        role_settings=role_settings,
        objects=objects,
    )


def capture(
    cur: Any, schemas: list[str], exclude: list[str], workdir: Path, backup_id: str
) -> tuple[DatabaseGlobals, StagedFile]:
    """``read_globals``, and the staged psql script of it (``globals.sql``, UTF-8)."""
    doc = read_globals(cur, schemas, exclude)
    script = render_script(doc, backup_id).encode()
    return doc, write_small(workdir / layout.GLOBALS_FILE, script)


@dataclass
class RolesMade:
    """What a restore did about roles: created, found, and what it could not give."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # Login roles it created: they have no password until someone sets one.
    need_password: list[str] = field(default_factory=list)
    # Attributes only a superuser may give, left out, per role.
    reduced: dict[str, list[str]] = field(default_factory=dict)
    # Memberships of roles that existed before: never granted (that would alter them).
    skipped_memberships: list[str] = field(default_factory=list)
    # Roles created now that the restoring login was made a member of, to give them objects.
    granted_to_login: list[str] = field(default_factory=list)


def _login(conn: Any) -> tuple[str, bool, bool]:
    row = conn.execute(
        "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return str(row[0]), bool(row[1]), bool(row[2])


def create_missing_roles(conn: Any, doc: DatabaseGlobals, server: str) -> RolesMade:
    """Create the roles ``doc`` names that the server lacks, in one transaction.

    Checked first, so that nothing is created when the restore could not finish: the login must
    be allowed to create roles, and (unless a superuser) be a member of every role that owns
    objects and already exists. Roles created now that own objects are granted to a login
    that is no superuser, as PostgreSQL requires to give them objects.

    :param conn: a psycopg connection (autocommit) to the target server
    :param server: the server as messages name it
    :raises RestoreError: the login cannot do it (nothing was created)
    """
    login, superuser, createrole = _login(conn)
    names = [r.name for r in doc.creatable_roles()]
    present = {
        row[0]
        for row in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)
        ).fetchall()
    }
    missing = [r for r in doc.creatable_roles() if r.name not in present]
    if missing and not (superuser or createrole):
        raise RestoreError(
            f"--roles: the login {login!r} may not create roles on {server}, and "
            f"{len(missing)} are missing ({', '.join(r.name for r in missing)}): restore as a "
            "superuser or a login with CREATEROLE, or create them first. Nothing was restored"
        )
    owners = sorted({o.owner for o in doc.objects if o.owner} | {doc.owner})
    if not superuser:
        foreign = [
            row[0]
            for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
                "AND NOT pg_has_role(current_user, oid, 'MEMBER')",
                ([o for o in owners if o in present],),
            ).fetchall()
        ]
        if foreign:
            raise RestoreError(
                f"--roles: the login {login!r} is not a member of {', '.join(foreign)}, which "
                f"own objects of the database: GRANT {', '.join(foreign)} TO {login} on "
                f"{server}, or restore as a superuser. Nothing was restored"
            )
    made = RolesMade(existing=sorted(present))
    with conn.transaction():
        for role in missing:
            sql, dropped = create_role_sql(role, superuser)
            conn.execute(sql)
            for statement in role_statements(role):
                conn.execute(statement)
            made.created.append(role.name)
            if role.login:
                made.need_password.append(role.name)
            if dropped:
                made.reduced[role.name] = dropped
        for m in doc.memberships:
            if m.member in made.created:
                conn.execute(grant_role_sql(m))
            else:
                made.skipped_memberships.append(f"{m.member} in {m.role}")
        if not superuser:
            for name in sorted(set(owners) & set(made.created)):
                conn.execute(f"GRANT {ident(name)} TO {ident(login)}")
                made.granted_to_login.append(name)
    log.info(
        "roles on %s: created %s; existing, left as they are: %s",
        server,
        ", ".join(made.created) or "none",
        ", ".join(made.existing) or "none",
    )
    return made
