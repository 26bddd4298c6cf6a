"""Tests for pg_backup.core.dbprops and core.dbscript: the database as it was, as data and SQL."""

from __future__ import annotations

import pytest

from pg_backup.core.dbprops import (
    DatabaseGlobals,
    DatabaseLocale,
    Membership,
    ObjectGrants,
    Role,
    RoleSettings,
    compare,
    parse_aclitem,
)
from pg_backup.core.dbscript import render_script
from pg_backup.core.dbsql import (
    check_target_server,
    create_database_sql,
    create_role_sql,
    database_acl_sql,
    database_settings_sql,
    ident,
    locale_error,
    probe_locale_sql,
    set_clause,
    split_guc_list,
)
from pg_backup.core.errors import RestoreError

ICU = DatabaseLocale(
    encoding="UTF8",
    locale_provider="icu",
    collate="C.UTF-8",
    ctype="C.UTF-8",
    provider_locale="en-US",
    collation_version="153.120",
)


def doc(**overrides: object) -> DatabaseGlobals:
    fields: dict[str, object] = {
        "database": "voting",
        "locale": ICU,
        "owner": "app_owner",
        "acl": ["=T/app_owner", "app_owner=CTc/app_owner", "app_ro=c/app_owner"],
        "settings": ["search_path=app, public", "TimeZone=Europe/Berlin"],
        "comment": "voting, as it was",
        "roles": [
            Role(name="app_owner", login=True, settings=["statement_timeout=30s"]),
            Role(name="app_ro", comment="read-only"),
            Role(name="analyst", login=True),
            Role(name="pg_read_all_data", builtin=True, inherit=True),
        ],
        "memberships": [Membership(role="app_ro", member="analyst")],
        "role_settings": [RoleSettings(role="analyst", settings=["work_mem=8MB"])],
        "objects": [
            ObjectGrants(kind="schema", name="app", owner="app_owner", acl=["app_ro=U/app_owner"]),
            ObjectGrants(kind="table", name="app.codes", owner="app_owner", acl=None),
            ObjectGrants(kind="column", name="app.people.email", owner=None, acl=["app_ro=r/o"]),
        ],
    }
    fields.update(overrides)
    return DatabaseGlobals.model_validate(fields)


@pytest.mark.parametrize(
    ("stored", "elements"),
    [
        ("app, public", ["app", "public"]),
        ('"$user", public', ["$user", "public"]),
        ('""', [""]),
        ('"my ""odd"" schema",b', ['my "odd" schema', "b"]),
        ("  ", []),
        ('"unclosed', None),
        ("a b", None),
        ("a,,b", None),
    ],
)
def test_split_guc_list_follows_postgres(stored: str, elements: list[str] | None) -> None:
    """Stored list settings split like PostgreSQL's SplitGUCList, malformed ones give None."""
    assert split_guc_list(stored) == elements


def test_set_clause_quotes_like_pg_dump() -> None:
    """List settings are quoted element by element; other values as one literal."""
    assert set_clause("search_path=app, public") == """SET "search_path" TO 'app', 'public'"""
    assert set_clause('search_path="$user", "Élection"') == (
        """SET "search_path" TO '$user', 'Élection'"""
    )
    assert set_clause("TimeZone=Europe/Berlin") == """SET "TimeZone" TO 'Europe/Berlin'"""
    assert set_clause("app.note=it's=1") == """SET "app.note" TO 'it''s=1'"""
    assert set_clause('search_path="broken') == """SET "search_path" TO '"broken'"""


def test_create_database_keeps_encoding_provider_and_locales() -> None:
    """CREATE DATABASE spells out exactly the source's locale, per provider."""
    assert create_database_sql('we"ird', ICU) == (
        """CREATE DATABASE "we""ird" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' """
        """LC_CTYPE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"""
    )
    libc = DatabaseLocale(encoding="LATIN1", collate="de_DE", ctype="de_DE")
    assert create_database_sql("d", libc).endswith(
        "ENCODING 'LATIN1' LC_COLLATE 'de_DE' LC_CTYPE 'de_DE'"
    )
    rules = ICU.model_copy(update={"icu_rules": "&a < z"})
    assert create_database_sql("d", rules).endswith("ICU_LOCALE 'en-US' ICU_RULES '&a < z'")
    builtin = DatabaseLocale(
        encoding="UTF8",
        locale_provider="builtin",
        collate="C",
        ctype="C",
        provider_locale="C.UTF-8",
    )
    assert "LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8'" in create_database_sql("d", builtin)


def test_target_server_without_icu_or_too_old_is_refused() -> None:
    """ICU needs PostgreSQL 15 and an ICU build, ICU rules 16, builtin 17; messages name the fix."""
    check_target_server(ICU, "s", 15, True)
    check_target_server(DatabaseLocale(encoding="UTF8", collate="C", ctype="C"), "s", 12, False)
    with pytest.raises(
        RestoreError, match="built without ICU.*install a PostgreSQL built with ICU"
    ):
        check_target_server(ICU, "pg@new:5432", 16, False)
    with pytest.raises(RestoreError, match="PostgreSQL 14 .* cannot .*PostgreSQL 15 or newer"):
        check_target_server(ICU, "s", 14, True)
    with pytest.raises(RestoreError, match="PostgreSQL 16 or newer"):
        check_target_server(ICU.model_copy(update={"icu_rules": "&a<b"}), "s", 15, True)


def test_locale_error_names_the_missing_locale_and_the_fix() -> None:
    """PostgreSQL's refusals become messages naming the locale and how to install it."""
    err = locale_error(ICU, "pg@new", 'invalid locale name: "de_DE.UTF-8"')
    assert "lacks the locale 'de_DE.UTF-8'" in str(err) and "locale-gen" in str(err)
    err = locale_error(ICU, "pg@new", 'could not create locale "xx_YY": No such file or directory')
    assert "lacks the locale 'xx_YY'" in str(err)
    err = locale_error(ICU, "pg@new", 'encoding "LATIN1" does not match locale "C.UTF-8"')
    assert "does not match locale" in str(err) and "Nothing was restored" in str(err)


def test_locale_probe_loads_libc_locales_only_when_not_c() -> None:
    """The preflight probe is a temporary collation of the source's libc locales; none for C."""
    assert probe_locale_sql(ICU) == (
        "CREATE COLLATION pg_temp.pg_backup_probe (LC_COLLATE = 'C.UTF-8', LC_CTYPE = 'C.UTF-8')"
    )
    assert (
        probe_locale_sql(DatabaseLocale(encoding="SQL_ASCII", collate="C", ctype="POSIX")) is None
    )


def test_create_role_leaves_out_what_only_a_superuser_may_give() -> None:
    """Every attribute is spelled out; SUPERUSER, REPLICATION, BYPASSRLS only for a superuser."""
    role = Role(
        name="ops",
        superuser=True,
        login=True,
        replication=True,
        createdb=True,
        connection_limit=5,
        valid_until="2027-01-01 00:00:00+00",
    )
    sql, dropped = create_role_sql(role, superuser=True)
    assert sql == (
        'CREATE ROLE "ops" WITH SUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN REPLICATION '
        "NOBYPASSRLS CONNECTION LIMIT 5 VALID UNTIL '2027-01-01 00:00:00+00'"
    )
    assert dropped == []
    sql, dropped = create_role_sql(role, superuser=False)
    assert "NOSUPERUSER" in sql and "NOREPLICATION" in sql and "CREATEDB LOGIN" in sql
    assert dropped == ["SUPERUSER", "REPLICATION"]


def test_aclitems_parse_with_quoted_names_and_public() -> None:
    """grantee=privileges/grantor, quoted names unquoted, PUBLIC as an empty grantee."""
    assert parse_aclitem("=Tc/app_owner") == ("", "Tc", "app_owner")
    assert parse_aclitem('"ro x"=c*/"we""ird"') == ("ro x", "c*", 'we"ird')


def test_database_acl_is_rebuilt_exactly() -> None:
    """The database's grants: everything revoked, then each aclitem granted (with grant option)."""
    statements = database_acl_sql(ident("db"), "app_owner", ["=T/o", '"r x"=c*T/o'])
    assert statements == [
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "app_owner"',
        'GRANT TEMPORARY ON DATABASE "db" TO PUBLIC',
        'GRANT CONNECT, TEMPORARY ON DATABASE "db" TO "r x"',
        'GRANT CONNECT ON DATABASE "db" TO "r x" WITH GRANT OPTION',
    ]
    assert database_acl_sql(ident("db"), "o", None) == []


def test_database_settings_and_comment() -> None:
    """ALTER DATABASE ... SET per stored setting, then the comment."""
    assert database_settings_sql(':"db"', doc()) == [
        """ALTER DATABASE :"db" SET "search_path" TO 'app', 'public'""",
        """ALTER DATABASE :"db" SET "TimeZone" TO 'Europe/Berlin'""",
        """COMMENT ON DATABASE :"db" IS 'voting, as it was'""",
    ]


def test_catalog_rows_of_postgres_12_15_and_17_give_the_same_model() -> None:
    """to_jsonb(pg_database) of any version: provider, ICU locale, rules, version."""
    pg12 = {"datcollate": "en_US.UTF-8", "datctype": "en_US.UTF-8"}
    assert DatabaseLocale.from_catalog("UTF8", pg12).locale_provider == "libc"
    pg15 = {**pg12, "datlocprovider": "i", "daticulocale": "en-US", "datcollversion": "153.120"}
    assert DatabaseLocale.from_catalog("UTF8", pg15).provider_locale == "en-US"
    pg17 = {**pg12, "datlocprovider": "b", "datlocale": "C.UTF-8", "daticurules": None}
    loc = DatabaseLocale.from_catalog("UTF8", pg17)
    assert (loc.locale_provider, loc.provider_locale, loc.icu_rules) == ("builtin", "C.UTF-8", None)


def test_compare_identical_passes() -> None:
    """The same capture on both sides: nothing fails, every object counted."""
    result = compare(doc(), doc())
    assert result.failures(owners=True) == [] and result.lost == 0 and result.objects == 4


def test_compare_separates_what_any_restore_and_what_roles_bring_back() -> None:
    """Locale and settings always fail; owners and grants only a restore with roles; lost counts."""
    restored = doc(
        locale=ICU.model_copy(update={"provider_locale": "de-DE", "collation_version": "72.1"}),
        owner="postgres",
        objects=[
            ObjectGrants(kind="schema", name="app", owner="postgres", acl=None),
            ObjectGrants(kind="table", name="app.codes", owner="postgres", acl=None),
        ],
    )
    result = compare(doc(), restored)
    assert result.differences == ["database locale: provider_locale 'en-US', restored 'de-DE'"]
    assert "database owner: app_owner, restored postgres" in result.ownership
    assert "column app.people.email: grants ['app_ro=r/o'], restored none" in result.ownership
    assert result.lost == 4  # the database, schema app, table app.codes, the column's grants
    assert any("collation version" in n for n in result.notes)
    assert result.failures(owners=False) == result.differences


def test_compare_notes_roles_that_existed_and_fails_roles_it_created() -> None:
    """A role left as it was is a note; one this restore created with other attributes fails."""
    changed = doc(
        roles=[r.model_copy(update={"createdb": True}) for r in doc().roles], memberships=[]
    )
    existed = compare(doc(), changed)
    assert existed.ownership == []
    assert any("role analyst: createdb False, here True" in n for n in existed.notes)
    assert any("membership of analyst in app_ro: missing" in n for n in existed.notes)
    made = compare(doc(), changed, created={"analyst"})
    assert "role analyst: createdb False, here True" in made.ownership
    assert "membership of analyst in app_ro: missing" in made.ownership
    gone = compare(doc(), doc(roles=[]))
    assert "role app_owner: missing" in gone.ownership


def test_script_creates_missing_roles_only_and_names_no_role_in_comments() -> None:
    """globals.sql: guarded CREATE ROLE per role, memberships of created roles, database part."""
    nasty = "evil\n\\! touch /tmp/pwned\n"
    script = render_script(
        doc(roles=[*doc().roles, Role(name=nasty)]), "voting_20261130T020000Z_scheduled"
    )
    assert 'CREATE ROLE "app_owner" WITH NOSUPERUSER INHERIT' in script
    assert "pg_read_all_data" not in script  # predefined roles exist everywhere
    assert 'GRANT "app_ro" TO "analyst";' in script
    assert """ALTER DATABASE :"db" OWNER TO "app_owner";""" in script
    assert "IN DATABASE %I SET" in script and "current_setting('pg_backup.db')" in script
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    comments = [line for line in script.splitlines() if line.startswith("--")]
    assert all("evil" not in line and "app_owner" not in line for line in comments)
    # A name holding the dollar-quote tag gets a body with another tag.
    tagged = render_script(doc(roles=[Role(name="x$pgb$y")]), "b")
    assert "DO $pgb1$" in tagged
