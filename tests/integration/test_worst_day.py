"""The worst day: a set restored onto a new server as the source was (locale, settings, roles).

The source is a voting database on the local server, made the way a managed service's would be:
an application owner role, a read-only role, a member of it, schema, table, column and function
grants, default privileges, an ICU collation, database and role settings, a comment. Its backup
login has ``pg_read_all_data`` and no superuser. One verified set of it is made once for this
module (S3 storage), and restored onto a second cluster that has none of its roles; every test
compares catalogs of source and restore, not exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_backup.core import layout
from tests.conftest import PG_HOST, PG_PORT, PG_USER, REPO, psql
from tests.integration.conftest import Harness, task_states
from tests.integration.test_cli import cli
from tests.second_cluster import Cluster

# The locale input: valid only under the source's ICU collation. Under "C", 'B' < 'a',
# so both the CHECK and the partition bounds reject rows that the source holds.
SOURCE_SQL = """
SET ROLE {p}_owner;
CREATE EXTENSION citext;
CREATE SCHEMA app;
CREATE TABLE app.codes (code text NOT NULL CHECK (code < 'Z'));
INSERT INTO app.codes VALUES ('a'), ('B'), ('m');
CREATE TABLE app.names (n text NOT NULL) PARTITION BY RANGE (n);
CREATE TABLE app.names_a_c PARTITION OF app.names FOR VALUES FROM ('a') TO ('c');
CREATE TABLE app.names_rest PARTITION OF app.names DEFAULT;
INSERT INTO app.names VALUES ('a'), ('B'), ('b'), ('x');
CREATE TABLE app.people (id serial PRIMARY KEY, email citext UNIQUE, secret text);
INSERT INTO app.people (email, secret) VALUES ('émile@x', 's1');
CREATE FUNCTION app.code_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM app.codes';
REVOKE EXECUTE ON FUNCTION app.code_count() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.code_count() TO {p}_ro;
GRANT USAGE ON SCHEMA app TO {p}_ro;
GRANT SELECT ON app.codes, app.names TO {p}_ro;
GRANT SELECT (id, email) ON app.people TO {p}_ro;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO {p}_ro;
CREATE TABLE app.later (x int);
INSERT INTO app.later VALUES (1);
"""

# Everything a restore must bring back, read straight from the catalogs (not by the code under
# test). Extension members are left out: CREATE EXTENSION makes them, owned by whoever runs it.
OBJECTS_SQL = r"""
WITH ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e'),
ns AS (SELECT oid, nspname FROM pg_namespace
       WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema')
SELECT 'schema', nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
 WHERE oid IN (SELECT oid FROM ns)
UNION ALL
SELECT 'relation ' || c.relkind::text, ns.nspname || '.' || c.relname, pg_get_userbyid(c.relowner),
       c.relacl::text
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm')
  AND c.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'column', c.relname || '.' || a.attname, NULL, a.attacl::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
WHERE a.attacl IS NOT NULL
UNION ALL
SELECT 'function', p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.proacl::text
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
WHERE p.oid NOT IN (SELECT objid FROM ext WHERE classid = 'pg_proc'::regclass)
UNION ALL
SELECT 'default acl', coalesce(n.nspname, '-') || ' ' || d.defaclobjtype::text,
       pg_get_userbyid(d.defaclrole), d.defaclacl::text
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
ORDER BY 1, 2
"""

DATABASE_SQL = """
SELECT pg_encoding_to_char(d.encoding), d.datlocprovider, d.datcollate, d.datctype,
       d.daticulocale, pg_get_userbyid(d.datdba), d.datacl::text,
       shobj_description(d.oid, 'pg_database'),
       (SELECT array_agg(coalesce(pg_get_userbyid(NULLIF(s.setrole, 0)), '-') || ' '
                         || array_to_string(s.setconfig, ',') ORDER BY s.setrole)
          FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
FROM pg_database d WHERE d.datname = current_database()
"""

ROLES_SQL = r"""
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, rolconfig, shobj_description(oid, 'pg_authid'),
       ARRAY(SELECT pg_get_userbyid(m.roleid) FROM pg_auth_members m WHERE m.member = r.oid
             ORDER BY 1)
FROM pg_roles r WHERE rolname LIKE %s ORDER BY rolname
"""


def catalogs(conn: Any, prefix: str) -> dict[str, Any]:
    """What makes the database itself: locale, settings, comment, owners, grants, its roles."""
    with conn.cursor() as cur:
        database = cur.execute(DATABASE_SQL).fetchone()
        objects = cur.execute(OBJECTS_SQL).fetchall()
        roles = cur.execute(ROLES_SQL, (prefix.replace("_", r"\_") + r"\_%",)).fetchall()
    return {"database": database, "objects": objects, "roles": roles}


def behaviour(conn: Any) -> tuple[Any, ...]:
    """Locale-dependent answers: upper() of é, the sort of mixed case, citext equality."""
    return conn.execute(
        "SELECT upper('é'), (SELECT string_agg(n, ',' ORDER BY n) FROM app.names),"
        " 'Émile@x'::citext = 'émile@x'::citext, current_setting('search_path'),"
        " current_setting('TimeZone')"
    ).fetchone()


@pytest.fixture(scope="module")
def source(pg_server: None) -> Iterator[dict[str, str]]:
    """The voting database on the local server, its roles, and a backup login without superuser."""
    p = f"pgbw{uuid.uuid4().hex[:6]}"
    db = f"{p}_voting"
    psql(
        f"""
        CREATE ROLE {p}_owner LOGIN PASSWORD 'source-only-secret' CONNECTION LIMIT 20;
        ALTER ROLE {p}_owner SET statement_timeout = '30s';
        CREATE ROLE {p}_ro NOLOGIN;
        COMMENT ON ROLE {p}_ro IS 'read-only reporting';
        CREATE ROLE {p}_analyst LOGIN IN ROLE {p}_ro;
        CREATE ROLE {p}_backup LOGIN IN ROLE pg_read_all_data;
        """
    )
    psql(
        f"CREATE DATABASE {db} OWNER {p}_owner LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
        "LOCALE 'C.UTF-8' TEMPLATE template0"
    )
    psql(
        f"""
        ALTER DATABASE {db} SET search_path = app, public;
        ALTER DATABASE {db} SET timezone = 'Europe/Berlin';
        ALTER ROLE {p}_analyst IN DATABASE {db} SET work_mem = '8MB';
        COMMENT ON DATABASE {db} IS 'voting, as it was';
        REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {db} TO {p}_ro, {p}_backup;
        """
    )
    psql(SOURCE_SQL.format(p=p), db)
    yield {"prefix": p, "db": db}
    for name in psql(f"SELECT datname FROM pg_database WHERE datname LIKE '%{p}%'").split():
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for role in ("analyst", "ro", "backup", "owner"):
        psql(f"DROP ROLE IF EXISTS {p}_{role}")


@pytest.fixture(scope="module")
def backed_up(
    source: dict[str, str], age_keys: Any, airflow_db: Path, s3_server: Any, smtp_sink: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Harness]:  # fmt: skip
    """One run of the real daily DAG on the source, into S3: the set every test restores."""
    tmp = tmp_path_factory.mktemp("worst-day")
    name = source["prefix"]
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{name.upper()}"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": PG_HOST,
            "port": PG_PORT,
            "login": f"{name}_backup",
            "schema": source["db"],
        }
    )
    os.environ["AIRFLOW_CONN_PGB_TEST_SCRATCH"] = json.dumps(
        {"conn_type": "postgres", "host": PG_HOST, "port": PG_PORT, "login": PG_USER,
         "schema": "postgres"}
    )  # fmt: skip
    os.environ["AIRFLOW_CONN_PGB_WORST_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    h = Harness(
        name=name,
        source_db=source["db"],
        config_path=tmp / "pg_backup.yaml",
        storage_url=f"s3://{s3_server.new_bucket()}/backups",
        age=age_keys,
        staging_dir=tmp / "staging",
        s3=s3_server,
        mail=smtp_sink,
        _clock=datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
        + timedelta(minutes=uuid.uuid4().int % 9999),
    )
    h.write_config(encryption={"identity_conn_id": "pgb_worst_identity"})
    h.last_run = h.run()  # type: ignore[attr-defined]
    yield h
    os.environ.pop("AIRFLOW_CONN_PGB_WORST_IDENTITY", None)


@pytest.fixture
def standby(second_cluster: Cluster, source: dict[str, str]) -> Cluster:
    """The second cluster as a new server: no database and none of the source's roles."""
    for name in second_cluster.psql(
        "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"
    ).split():
        second_cluster.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
    for role in ("analyst", "ro", "backup", "owner"):
        second_cluster.psql(f"DROP ROLE IF EXISTS {source['prefix']}_{role}")
    return second_cluster


def only_set(h: Harness) -> tuple[str, str]:
    """The backup id and key prefix (below the bucket) of the module's one set."""
    key = next(o.key for o in h.storage().list(f"{h.name}/") if o.key.endswith("manifest.json"))
    return key.split("/")[-2], key[: -len("manifest.json")]


def restore_cli(h: Harness, standby: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``pg-backup restore`` with the target's password in PGPASSWORD, as an operator would."""
    os.environ["PGPASSWORD"] = standby.password
    try:
        return cli(h, "restore", h.name, *args)
    finally:
        os.environ.pop("PGPASSWORD", None)


def restore_with_manifest_saying(
    h: Harness, standby: Cluster, into: str, **locale: str
) -> subprocess.CompletedProcess[str]:
    """``restore --roles`` while the set's manifest records another locale (put back after)."""
    from pg_backup.core.manifest import Manifest

    backup, prefix = only_set(h)
    store = h.storage()
    original = store.get_bytes(prefix + layout.MANIFEST_OBJECT)
    manifest = Manifest.from_bytes(original)
    assert manifest.database is not None
    changed = manifest.model_copy(update={"database": manifest.database.model_copy(update=locale)})
    store.put_bytes(prefix + layout.MANIFEST_OBJECT, changed.to_bytes())
    try:
        return restore_cli(h, standby, backup, "--roles", "--into", standby.dsn(into))
    finally:
        store.put_bytes(prefix + layout.MANIFEST_OBJECT, original)


def test_icu_source_verifies_with_a_backup_login_without_superuser(backed_up, source):
    """The issue's locale input verifies; the manifest records the ICU locale; the login is no superuser."""
    states = task_states(backed_up.last_run)
    assert set(states.values()) == {"success"}, states
    p = source["prefix"]
    assert psql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{p}_backup'") == "f"
    from pg_backup.core.manifest import Manifest, Verification

    _, prefix = only_set(backed_up)
    store = backed_up.storage()
    verification = Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert verification.status == "verified" and verification.mismatches == 0
    manifest = Manifest.from_bytes(store.get_bytes(prefix + layout.MANIFEST_OBJECT))
    assert manifest.database is not None
    assert (manifest.database.encoding, manifest.database.locale_provider) == ("UTF8", "icu")
    assert (manifest.database.provider_locale, manifest.database.collate) == ("en-US", "C.UTF-8")
    assert manifest.globals is not None and manifest.globals.key == prefix + layout.GLOBALS_OBJECT


def test_roles_are_stored_encrypted_and_without_passwords(backed_up, source, tmp_path):
    """globals.sql.age is age-encrypted, names no role in the clear, and holds no password."""
    p = source["prefix"]
    _, prefix = only_set(backed_up)
    stored = backed_up.storage().get_bytes(prefix + layout.GLOBALS_OBJECT)
    assert stored.startswith(b"age-encryption.org/v1") and p.encode() not in stored
    (tmp_path / "g.age").write_bytes(stored)
    script = subprocess.run(
        ["age", "-d", "-i", str(backed_up.age.identity_file), str(tmp_path / "g.age")],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    for role in ("owner", "ro", "analyst", "backup"):
        assert f'CREATE ROLE "{p}_{role}"' in script
    assert f'GRANT "{p}_ro" TO "{p}_analyst"' in script
    assert "source-only-secret" not in script and "SCRAM-SHA-256" not in script
    assert "PASSWORD '" not in script


def test_restore_with_roles_onto_a_new_server_is_the_source_as_it_was(backed_up, source, standby):
    """restore --roles: roles, owners, grants, settings, locale identical; the app logs in and works."""
    p, db = source["prefix"], "voting_restored"
    backup, _ = only_set(backed_up)
    done = restore_cli(backed_up, standby, backup, "--roles", "--into", standby.dsn(db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "as it was: locale, settings, roles, owners and grants equal the source's" in done.stdout
    need = re.search(r"need a password.*?: (.*) \(ALTER ROLE", done.stdout)
    assert need and set(need.group(1).split(", ")) == {f"{p}_owner", f"{p}_analyst", f"{p}_backup"}

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=source["db"]) as src:
        before = catalogs(src, p)
        source_behaviour = behaviour(src)
    with standby.connect(db) as restored:
        after = catalogs(restored, p)
    assert after["database"] == before["database"], (after["database"], before["database"])
    assert after == before
    assert before["roles"] and before["objects"] and before["database"][1] == "i"

    # The application's roles, given new passwords, can do what they could before, no more.
    standby.psql(f"ALTER ROLE {p}_owner PASSWORD 'new-owner-pw'")
    standby.psql(f"ALTER ROLE {p}_analyst PASSWORD 'new-analyst-pw'")
    with standby.connect(db, f"{p}_owner", "new-owner-pw") as owner:
        owner.execute("INSERT INTO app.codes VALUES ('q')")
        assert behaviour(owner) == source_behaviour
        with pytest.raises(psycopg.errors.UniqueViolation):
            owner.execute("INSERT INTO app.people (email) VALUES ('Émile@x')")
    with standby.connect(db, f"{p}_analyst", "new-analyst-pw") as analyst:
        assert analyst.execute("SELECT count(*) FROM app.later").fetchone() == (1,)
        assert analyst.execute("SELECT app.code_count()").fetchone() == (4,)
        assert analyst.execute("SHOW work_mem").fetchone() == ("8MB",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT secret FROM app.people")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("INSERT INTO app.codes VALUES ('r')")


def test_restore_with_roles_as_a_managed_services_admin(backed_up, source, standby):
    """A login with CREATEDB and CREATEROLE but no superuser restores with roles, owners and grants."""
    p, db = source["prefix"], "voting_by_admin"
    standby.psql(
        "DROP ROLE IF EXISTS pgbt_admin; CREATE ROLE pgbt_admin LOGIN CREATEDB CREATEROLE "
        "PASSWORD 'admin-pw'"
    )
    admin = Cluster(standby.major, standby.name, standby.port, "admin-pw", user="pgbt_admin")
    backup, _ = only_set(backed_up)
    done = restore_cli(backed_up, admin, backup, "--roles", "--into", admin.dsn(db))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "as it was: locale, settings, roles, owners and grants equal the source's" in done.stdout
    assert f"granted to the restoring login: {p}_owner" in done.stdout
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=source["db"]) as src:
        before = catalogs(src, p)
    with standby.connect(db) as restored:
        after = catalogs(restored, p)
    assert after["objects"] == before["objects"] and after["database"] == before["database"]


def test_restore_without_roles_says_what_it_left_out(backed_up, source, standby):
    """Without --roles: rows, locale and settings as they were, and the output names what was not."""
    p, db = source["prefix"], "voting_rows_only"
    backup, _ = only_set(backed_up)
    done = restore_cli(backed_up, standby, backup, "--into", standby.dsn(db))
    assert done.returncode == 0, done.stdout + done.stderr
    left_out = re.search(
        r"owners and grants of (\d+) objects not restored; rerun with --roles", done.stdout
    )
    # schema app, its 7 relations, 2 columns' grants, the function, the default privileges and
    # the database itself
    assert left_out and int(left_out.group(1)) == 13, done.stdout
    assert standby.psql(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{p}%'") == "0"
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=source["db"]) as src:
        before = catalogs(src, p)["database"]
        source_behaviour = behaviour(src)
    with standby.connect(db) as restored:
        after = catalogs(restored, p)["database"]
        assert behaviour(restored) == source_behaviour
    # locale, comment and the database's own settings as they were; owner and grants not
    assert after[:5] == before[:5] and after[7] == before[7]
    assert [s for s in after[8] if s.startswith("- ")] == [
        s for s in before[8] if s.startswith("- ")
    ]
    assert after[5] == "postgres"


def test_drill_on_the_standby_proves_roles_owners_and_grants(backed_up, source, standby):
    """drill.standby_conn_id: the drill restores there with roles and proves the catalogs equal."""
    from pg_backup.dags.drill import build_drill_dag

    os.environ["AIRFLOW_CONN_PGB_TEST_STANDBY"] = standby.conn_json("postgres")
    cfg = backed_up.write_config(drill={"standby_conn_id": "pgb_test_standby"})
    backed_up._clock += timedelta(hours=1)
    try:
        run = build_drill_dag(cfg).test(run_after=backed_up._clock, logical_date=backed_up._clock)
    finally:
        backed_up.write_config(drill={"standby_conn_id": None})
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    store = backed_up.storage()
    key = max(o.key for o in store.list(f"{backed_up.name}/drills/"))
    report = json.loads(store.get_bytes(key))
    (drilled,) = report["backups"]
    check = next(c for c in drilled["checks"] if c["name"].startswith("as it was"))
    assert check["ok"] and "roles, owners and grants" in check["name"], check
    p = source["prefix"]
    assert standby.psql(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{p}%'") == "4"
    assert standby.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgb_drill%'") == "0"


def test_stock_tools_recipe_on_a_new_server(backed_up, source, standby, tmp_path):
    """README's S3 line (twice) and restore block, run on the new server: the catalogs equal the source's."""
    readme = (REPO / "README.md").read_text()
    fetch = re.search(r"<!-- stock-fetch[^>]*-->\s*```sh\n(.*?)```", readme, re.S).group(1)
    block = re.search(r"<!-- stock-restore[^>]*-->\s*```sh\n(.*?)```", readme, re.S).group(1)
    bucket, _, base = backed_up.storage_url[5:].partition("/")
    _, prefix = only_set(backed_up)
    # The line as written, pointed at this test's bucket, set and S3-compatible endpoint.
    fetch = re.sub(r"s3://\S+/", f"s3://{bucket}/{base}/{prefix}", fetch)
    fetch = fetch.replace("https://s3.example.org", backed_up.s3.endpoint)
    aws = shutil.which("aws")
    assert aws, "the aws command is missing: `make tools` installs it"
    env = dict(
        os.environ,
        **standby.env(),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for _ in range(2):  # rerunning the line in the same directory works
        subprocess.run(["bash", "-euo", "pipefail", "-c", fetch], cwd=tmp_path, env=env, check=True)
    names = {path.name for path in tmp_path.iterdir()}
    assert {layout.DATA_OBJECT, layout.GLOBALS_OBJECT, layout.MANIFEST_OBJECT} <= names
    shutil.copy(backed_up.age.identity_file, tmp_path / "key.txt")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    p = source["prefix"]
    assert f"created role {p}_owner: it may log in" in done.stderr
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=source["db"]) as src:
        before = catalogs(src, p)
    with standby.connect("restored_voting") as restored:
        assert catalogs(restored, p) == before


def test_check_proves_what_the_drill_needs(backed_up, standby):
    """`pg-backup check` also proves the drill's key and standby: ok when fit, FAIL naming the field."""
    import pyrage

    name = backed_up.name
    os.environ["AIRFLOW_CONN_PGB_TEST_STANDBY"] = standby.conn_json("postgres")
    backed_up.write_config(drill={"standby_conn_id": "pgb_test_standby"})
    try:
        fit = cli(backed_up, "check", name)
        other_key = str(pyrage.x25519.Identity.generate())
        wrong_key = cli(
            backed_up,
            "check",
            name,
            env={
                "AIRFLOW_CONN_PGB_WORST_IDENTITY": json.dumps(
                    {"conn_type": "generic", "password": other_key}
                )
            },
        )
        backed_up.write_config(drill={"standby_conn_id": f"pgb_src_{name}"})
        on_source = cli(backed_up, "check", name)
    finally:
        backed_up.write_config(drill={"standby_conn_id": None})
    assert fit.returncode == 0, fit.stdout + fit.stderr
    assert (
        f"ok   {name}: drill identity connection 'pgb_worst_identity': 1 private key(s), "
        "1 for a configured recipient" in fit.stdout
    )
    (line,) = [x for x in fit.stdout.splitlines() if "drill standby connection" in x]
    assert line.startswith(f"ok   {name}: drill standby connection 'pgb_test_standby': ")
    assert f"{standby.port}" in line and "ICU locale en-US" in line, line

    assert wrong_key.returncode == 1
    assert (
        f"FAIL {name}: drill identity connection 'pgb_worst_identity': none of the 1 private "
        "key(s) in connection 'pgb_worst_identity' belongs to a recipient in "
        "encryption.recipients" in wrong_key.stdout
    ), wrong_key.stdout
    assert other_key not in wrong_key.stdout + wrong_key.stderr

    assert on_source.returncode == 1
    assert (
        f"FAIL {name}: drill standby connection 'pgb_src_{name}': drill.standby_conn_id "
        f"'pgb_src_{name}' points at the source database" in on_source.stdout
    ), on_source.stdout


def test_server_lacking_the_locale_is_refused_before_anything(backed_up, source, standby):
    """A locale the server lacks: refused naming it and the fix; nothing created, dropped or fetched."""
    from pg_backup.adapters.databases import Databases
    from pg_backup.adapters.pgconn import PgEndpoint
    from pg_backup.core.dbprops import DatabaseLocale
    from pg_backup.core.errors import RestoreError

    # Preflight's probe, which creates nothing, says the same of the scratch server.
    scratch = PgEndpoint("scratch", PG_HOST, PG_PORT, PG_USER, "postgres")
    with pytest.raises(RestoreError, match="lacks the locale 'xx_XX.UTF-8'"):
        Databases(scratch, None).check_locale(
            DatabaseLocale(encoding="UTF8", collate="C.UTF-8", ctype="xx_XX.UTF-8")
        )
    checked = cli(backed_up, "check", backed_up.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        "ok   "
        + backed_up.name
        + ": scratch server holds the source's locale: UTF8, ICU locale en-US"
        in checked.stdout
    )

    server = PgEndpoint(
        "standby", standby.host, standby.port, standby.user, "postgres", standby.password
    )
    standby.psql("CREATE DATABASE keep_me")
    standby.psql("CREATE TABLE precious (x int)", "keep_me")
    missing = DatabaseLocale(encoding="UTF8", collate="xx_XX.UTF-8", ctype="xx_XX.UTF-8")
    # The source connection proves keep_me is another database (the guard asks it first).
    src = PgEndpoint("src", PG_HOST, PG_PORT, PG_USER, source["db"])
    with pytest.raises(RestoreError) as err:
        Databases(server, src).create("keep_me", missing)
    assert "'xx_XX.UTF-8'" in str(err.value) and "locale-gen" in str(err.value)
    assert standby.psql("SELECT count(*) FROM precious", "keep_me") == "0"  # still there

    # The same through the command line: the manifest (read first) names a locale this server
    # lacks; the refusal comes before any download and leaves no database behind.
    done = restore_with_manifest_saying(backed_up, standby, "nope", collate="xx_XX.UTF-8")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "lacks the locale 'xx_XX.UTF-8'" in done.stderr and "Nothing was restored" in done.stderr
    assert "fetched" not in done.stdout
    assert standby.psql("SELECT count(*) FROM pg_database WHERE datname = 'nope'") == "0"
    assert (
        standby.psql(f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{source['prefix']}%'")
        == "0"
    )


def test_manifest_locale_changed_after_the_backup_is_caught(backed_up, standby):
    """A manifest whose locale differs from the encrypted record is refused; the new database is dropped."""
    done = restore_with_manifest_saying(backed_up, standby, "tampered", locale_provider="libc")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the manifest was changed after the backup" in done.stderr
    assert standby.psql("SELECT count(*) FROM pg_database WHERE datname = 'tampered'") == "0"


def test_a_databases_own_timeouts_do_not_cut_pg_backup_short(make_db):
    """statement_timeout and idle_in_transaction_session_timeout set on a database spare our sessions."""
    import time

    from pg_backup.adapters.pgconn import PgEndpoint

    db = make_db("pgbt_timeouts")
    psql(
        f"ALTER DATABASE {db} SET statement_timeout = '10ms';"
        f" ALTER DATABASE {db} SET idle_in_transaction_session_timeout = '50ms'"
    )
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db) as plain:
        with pytest.raises(psycopg.errors.QueryCanceled):  # what the settings do to others
            plain.execute("SELECT pg_sleep(0.2)")
    ours = PgEndpoint("t", PG_HOST, PG_PORT, PG_USER, db)
    with ours.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(0.2)")
    with ours.connect(autocommit=False) as conn:  # a transaction left idle, as the dump's is
        conn.execute("SELECT 1")
        time.sleep(0.3)
        assert conn.execute("SELECT 2").fetchone() == (2,)
        conn.rollback()


def test_sql_ascii_source_works_end_to_end(harness_factory, age_keys):
    """SQL_ASCII: dump, counts, verify, drill and CLI restore into SQL_ASCII, bytes kept exactly."""
    from pg_backup.dags.drill import build_drill_dag

    h = harness_factory("file", schema="")
    psql(f'DROP DATABASE "{h.source_db}"')
    psql(f"CREATE DATABASE \"{h.source_db}\" ENCODING 'SQL_ASCII' LOCALE 'C' TEMPLATE template0")

    def ascii_db(db: str) -> Any:
        # psycopg hands over SQL_ASCII text as bytes: the bytes themselves, as stored.
        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db, autocommit=True)

    # Bytes of no known encoding: a Latin-1 é in a table name, and text that is not UTF-8.
    with ascii_db(h.source_db) as conn:
        conn.execute(b'CREATE TABLE "caf\xe9" (t text)')
        conn.execute(b"INSERT INTO \"caf\xe9\" SELECT '\xff\xfe' || i FROM generate_series(1, 7) i")
    os.environ["AIRFLOW_CONN_PGB_ASCII_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    cfg = h.write_config(encryption={"identity_conn_id": "pgb_ascii_identity"})
    states = task_states(h.run())
    assert set(states.values()) == {"success"}, states

    h._clock += timedelta(hours=1)
    run = build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock)
    assert set(task_states(run).values()) == {"success"}, task_states(run)

    key = next(o.key for o in h.storage().list(f"{h.name}/") if o.key.endswith("manifest.json"))
    into = f"pgbt_ascii_into_{h.name}"
    try:
        done = cli(h, "restore", h.name, key.split("/")[-2], "--into", f"dbname={into}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verified  2 relations, 7 rows" in done.stdout
        encoding = f"SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '{into}'"
        assert psql(encoding) == "SQL_ASCII"
        rows = b'SELECT tableoid::regclass::text::bytea, t::bytea FROM "caf\xe9" ORDER BY 2'
        with ascii_db(into) as restored, ascii_db(h.source_db) as source:
            after = restored.execute(rows).fetchall()
            assert after == source.execute(rows).fetchall()
        assert after[0] == (b'"caf\xe9"', b"\xff\xfe1") and len(after) == 7
    finally:
        psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)')
        os.environ.pop("AIRFLOW_CONN_PGB_ASCII_IDENTITY", None)


def test_globals_script_takes_hostile_names_as_names(standby, tmp_path):
    """Names holding a newline and a psql meta-command are created as names by globals.sql, never run."""
    from psycopg import sql

    from pg_backup.core.dbprops import DatabaseGlobals, DatabaseLocale, Role
    from pg_backup.core.dbscript import render_script

    sentinel = Path(f"/tmp/pgb-{uuid.uuid4().hex[:8]}")  # short: a role name has 63 bytes
    nasty = f"evil\n\\! touch {sentinel}\n"
    doc = DatabaseGlobals(
        database="x",
        locale=DatabaseLocale(encoding="UTF8", collate="C", ctype="C"),
        owner=nasty,
        comment=f"note\n\\! touch {sentinel}\n",
        settings=[f"application_name=a'\n\\! touch {sentinel}"],
        roles=[Role(name=nasty, login=True)],
    )
    (tmp_path / "globals.sql").write_text(render_script(doc, "b"))
    standby.psql("CREATE DATABASE hostile")
    try:
        done = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-v", "db=hostile"]
            + ["-f", "globals.sql"],
            cwd=tmp_path,
            env=dict(os.environ, **standby.env()),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert not sentinel.exists()
        with standby.connect("hostile") as conn:
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'),"
                " (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid)"
                " FROM pg_database d WHERE datname = 'hostile'"
            ).fetchone()
        assert row == (nasty, doc.comment, doc.settings)
    finally:
        standby.psql("DROP DATABASE IF EXISTS hostile")
        with standby.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(nasty)))
