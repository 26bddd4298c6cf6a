"""The source database is never created, restored into or dropped, however its server is spelled.

A second cluster of our own (``clusters.py``: another system identifier, password auth) holds
a source whose login's password is made of URI delimiters. The alias is libpq's ``hostaddr``:
``host=vm hostaddr=127.0.0.1`` reaches a server under a name that is not its own, as an
``/etc/hosts`` alias, a DNS name or a port forward would.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any
from urllib.parse import quote

import pytest

from pg_backup.adapters.databases import Databases
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core import layout
from pg_backup.core.errors import PreflightError, SourceProtected
from pg_backup.core.manifest import Manifest
from pg_backup.stages.runtime import Runtime
from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.integration.clusters import Cluster, second_cluster
from tests.integration.conftest import task_states
from tests.integration.test_cli import cli, cli_in_process
from tests.integration.test_failures import SMALL_SCHEMA, conn_json, row_counts

# Every character that breaks a naive URI or DSN, and one outside ASCII.
SPECIAL = "p@ss:/%#?&=wörd "


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with second_cluster() as made:
        yield made


@pytest.fixture(scope="module")
def remote_source(cluster: Cluster) -> dict[str, Any]:
    """A source database on the second cluster, owned by a login with a SPECIAL password."""
    role = f"pgb_special_{uuid.uuid4().hex[:6]}"
    password = SPECIAL + uuid.uuid4().hex[:6]
    db = f"voting_{uuid.uuid4().hex[:6]}"
    make_role(cluster, role, password, "SUPERUSER", db)
    with cluster.connect(db, user=role, password=password) as conn:
        conn.execute(SMALL_SCHEMA)
    return {"role": role, "password": password, "db": db}


def make_role(cluster: Cluster, role: str, password: str, rights: str, db: str) -> None:
    """A login role on the cluster (password through the protocol, never argv) owning ``db``."""
    from psycopg import sql

    with cluster.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN " + rights + " PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(*map(sql.Identifier, (db, role)))
        )


def oid_and_counts(cluster: Cluster, db: str) -> tuple[int, list[Any]]:
    """The database's oid (it changes when a database is dropped and made again) and its rows."""
    (oid,) = cluster.sql("SELECT oid FROM pg_database WHERE datname = %s", params=(db,))[0]
    counts = cluster.sql('SELECT (SELECT count(*) FROM public."Vote"), count(*) FROM audit', db)
    return int(oid), counts


def test_special_password_backup_then_alias_of_the_source_is_refused_on_every_cli_path(
    harness_factory, cluster, remote_source, capsys
):
    """A URI password of @:/%#?&= backs up; restore into the source through an alias is refused with and without --force, and with the source connection unset."""
    h = harness_factory("file", schema="")
    src = remote_source
    uri = (
        f"postgresql://{src['role']}:{quote(src['password'], safe='')}"
        f"@127.0.0.1:{cluster.port}/{src['db']}"
    )
    source_var = f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"
    os.environ[source_var] = uri
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    store = h.storage()
    (key,) = [o.key for o in store.list(f"{h.name}/") if o.key.endswith(layout.MANIFEST_OBJECT)]
    manifest = Manifest.from_bytes(store.get_bytes(key))
    # The manifest records the source as its server reported it.
    (sysid,) = cluster.sql("SELECT system_identifier::text FROM pg_control_system()")[0]
    assert manifest.source is not None
    assert (manifest.source.system_identifier, manifest.source.port) == (sysid, cluster.port)
    assert manifest.source.database == src["db"]
    before = oid_and_counts(cluster, src["db"])
    assert before[1] == [(400, 150)]

    alias = f"host=vm hostaddr=127.0.0.1 port={cluster.port} user=root dbname={src['db']}"
    pw = {"PGPASSWORD": cluster.password}
    backup = manifest.backup_id
    identity = ["--identity", str(h.age.identity_file)]
    for extra, env in (
        (["--force"], pw),
        ([], pw),
        # The worst day: no source connection at all; the manifest still knows the source.
        (["--force"], {**pw, source_var: None}),
    ):
        done = cli_in_process(
            h, capsys, "restore", h.name, backup, "--into", alias, *identity, *extra, env=env
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert "refusing to create, restore into or drop" in done.stderr, done.stderr
        assert "it is the source database" in done.stderr, done.stderr
        assert oid_and_counts(cluster, src["db"]) == before
        assert src["password"] not in done.stdout + done.stderr

    # The same database name on another server is not the source: restored, counts proven.
    psql(f'CREATE DATABASE "{src["db"]}"')
    try:
        here = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={src['db']}"
        done = cli(h, "restore", h.name, backup, "--into", here, *identity, "--force")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rows exactly as in the snapshot" in done.stdout
        assert row_counts(src["db"]) == {'public."Vote"': 400, "public.audit": 150}
    finally:
        psql(f'DROP DATABASE IF EXISTS "{src["db"]}" WITH (FORCE)')
    assert oid_and_counts(cluster, src["db"]) == before


def alias_of(db: str, conn_id: str) -> PgEndpoint:
    """The shared test server under the name ``vm``, reached through hostaddr."""
    return PgEndpoint(conn_id, "vm", PG_PORT, PG_USER, db, options={"hostaddr": "127.0.0.1"})


def test_daily_preflight_refuses_a_scratch_connection_that_aliases_the_source(
    harness_factory, capfd, caplog
):
    """A scratch connection spelling the source's server as host=vm hostaddr=... fails preflight; the source is untouched."""
    h = harness_factory("file", schema=SMALL_SCHEMA)
    before = row_counts(h.source_db)
    scratch_id = f"pgb_alias_{h.name}"
    doc = json.loads(conn_json(h.source_db, host="vm"))
    doc["extra"] = {"hostaddr": "127.0.0.1"}
    os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = json.dumps(doc)
    h.write_config(scratch_conn_id=scratch_id)
    capfd.readouterr()
    caplog.clear()

    run = h.run()

    states = task_states(run)
    assert states["preflight"] == "failed" and states["dump"] == "upstream_failed", states
    out, err = capfd.readouterr()
    log = out + err + caplog.text
    assert f"scratch_conn_id {scratch_id!r} points at the source database" in log
    assert "the source's own session is listed on that server" in log
    assert row_counts(h.source_db) == before

    # Another database of the same server is allowed (and said to be the source's server).
    from pg_backup.stages.preflight import check_not_source

    source = PgEndpoint("src", PG_HOST, PG_PORT, PG_USER, h.source_db)
    assert "the source's server" in check_not_source(alias_of("postgres", scratch_id), source)
    with pytest.raises(PreflightError, match="points at the source database"):
        check_not_source(alias_of(h.source_db, scratch_id), source)


def test_backup_and_drill_databases_never_take_the_source_even_if_names_collide(
    harness_factory, make_db
):
    """Were the source named like a verify or drill database, create and drop refuse it: the daily and the drill paths."""
    from pg_backup.stages import drill, restore

    h = harness_factory("file", schema="")
    run = h.run_info()
    cfg = h.write_config()
    drill_backup = layout.backup_id(h.name, h._clock, "emergency")
    for name in (layout.scratch_db_name(run.backup_id), layout.drill_db_name(drill_backup)):
        psql(f'CREATE DATABASE "{name}"')
        try:
            psql("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1)", name)
            oid = psql(f"SELECT oid FROM pg_database WHERE datname = '{name}'")
            os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = conn_json(name)
            # The scratch connection spells the same server another way.
            scratch_id = f"pgb_alias_{h.name}"
            doc = json.loads(conn_json("postgres", host="vm"))
            doc["extra"] = {"hostaddr": "127.0.0.1"}
            os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = json.dumps(doc)
            cfg = h.write_config(scratch_conn_id=scratch_id)
            rt = Runtime(cfg, run)
            with pytest.raises(SourceProtected, match="it is the source database"):
                rt.scratch_databases.create(name)  # create_scratch_db and create_drill_dbs
            # The teardowns that drop them, each through its own stage function.
            if name.startswith("pgb_verify_"):
                teardown: Any = partial(restore.drop_scratch_db, rt)
            else:
                teardown = partial(drill.drop_drill_dbs, Runtime(cfg), {"backups": [drill_backup]})
            with pytest.raises(SourceProtected, match="it is the source database"):
                teardown()
            assert psql(f"SELECT oid FROM pg_database WHERE datname = '{name}'") == oid
            assert psql("SELECT count(*) FROM keep_me", name) == "1"
        finally:
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_without_the_system_identifier_the_probe_decides_and_unknown_is_refused(cluster):
    """With pg_control_system() revoked, the session probe still tells; with no live source either, an existing database is refused naming the grant."""
    from psycopg import sql

    role, password = f"pgb_plain_{uuid.uuid4().hex[:6]}", "Plain-" + uuid.uuid4().hex
    db = f"src_{uuid.uuid4().hex[:6]}"
    make_role(cluster, role, password, "CREATEDB", db)
    # Only on our own cluster, in each database (function grants live in each): what some
    # managed services do.
    for each in ("postgres", db):
        cluster.sql("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC", each)
    try:
        source = PgEndpoint("src", "127.0.0.1", cluster.port, role, db, password)
        server = PgEndpoint(
            "scr", "vm", cluster.port, role, "postgres", password, {"hostaddr": "127.0.0.1"}
        )
        with source.connect(autocommit=True) as conn:
            from pg_backup.adapters.pgconn import source_identity

            assert source_identity(conn).system_identifier is None  # really refused
        found = Databases(server, source).verdict(db)
        assert found.is_source is True and "session is listed" in found.why, found
        # Another database on that server: the probe proves it is not the source.
        assert Databases(server, source).verdict("postgres").is_source is False
        # The source does not answer, no identity recorded: an existing database is refused.
        gone = PgEndpoint("src", "127.0.0.1", 1, role, db, password)
        with pytest.raises(SourceProtected) as err:
            Databases(server, gone).guard("postgres")
        assert "cannot be proven not to be the source" in str(err.value)
        assert "GRANT EXECUTE ON FUNCTION pg_control_system()" in str(err.value)
        # ... while a database that does not exist yet may always be created.
        Databases(server, gone).guard(f"new_{uuid.uuid4().hex[:6]}")
        # A server of another cluster (the shared one) is told apart by the probe alone.
        here = PgEndpoint("here", PG_HOST, PG_PORT, PG_USER, "postgres")
        assert Databases(here, source).verdict("postgres").is_source is False
    finally:
        with cluster.connect() as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_source_down_after_the_dump_neither_fails_verification_nor_opens_the_guard(
    harness_factory,
):
    """The source stops answering after upload: restore and verify still run (the manifest's identity tells the source apart), and the source is still refused."""
    from pg_backup.core.records import EncryptResult
    from pg_backup.stages.preflight import run_preflight
    from pg_backup.stages.restore import create_scratch_db, drop_scratch_db, restore_staged
    from pg_backup.stages.upload import upload_set
    from pg_backup.stages.verify import verify_restore
    from tests.conftest import free_port
    from tests.integration.test_failures import stage_until_encrypted

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    checked = run_preflight(Runtime(cfg, run))
    dumped, data, tables = stage_until_encrypted(cfg, run)
    upload_set(
        Runtime(cfg, run), dumped, EncryptResult(data=data, tables=tables), source=checked.source
    )
    # The source connection now leads nowhere (a failover, an outage).
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = conn_json(h.source_db, port=free_port())
    database = create_scratch_db(Runtime(cfg, run), checked.locale)
    try:
        restored = restore_staged(Runtime(cfg, run), dumped, database, made_in=checked.locale)
        record = verify_restore(Runtime(cfg, run), dumped, restored)
        assert record.status == "verified" and record.rows_checked == 550
        # The same server under the same spelling as the scratch connection: only the
        # recorded identity can tell, and it does.
        with pytest.raises(SourceProtected, match="it is the source database"):
            Runtime(cfg, run).scratch_databases.drop(h.source_db)
        assert row_counts(h.source_db) == {'public."Vote"': 400, "public.audit": 150}
    finally:
        drop_scratch_db(Runtime(cfg, run))
