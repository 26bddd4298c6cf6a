"""The backup DAGs end to end under dag.test(), on real PostgreSQL, S3 over HTTP and file://."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from pg_backup.core import layout
from pg_backup.core.counts import counts_from_json
from pg_backup.core.manifest import Manifest, Verification
from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.integration.conftest import objects, task_states, xcoms


def asset_events(dag_run):
    """Extras of the asset events the run emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(
            AssetEvent.source_dag_id == dag_run.dag_id, AssetEvent.source_run_id == dag_run.run_id
        )
        return [dict(row.extra) for row in rows]


def _only_set(store):
    found = objects(store)
    manifest_key = next(k for k in found if k.endswith(layout.MANIFEST_OBJECT))
    prefix = manifest_key[: -len(layout.MANIFEST_OBJECT)]
    return found, prefix, Manifest.from_bytes(store.get_bytes(manifest_key))


def _source_counts(db):
    """Exact counts of the rich schema's tables in the source right now."""
    from pg_backup.adapters.pgconn import PgEndpoint
    from pg_backup.core.counts import count_relations

    src = PgEndpoint("src", PG_HOST, PG_PORT, PG_USER, db)
    with src.connect(autocommit=True) as conn, conn.cursor() as cur:
        return {c.key: c.rows for c in count_relations(cur, [], [])}


def test_full_pipeline_file_storage(harness_factory):
    """A scheduled run on a tricky schema stores a complete, verified set in file:// storage."""
    h = harness_factory("file")
    run = h.run()
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    store = h.storage()
    found, prefix, manifest = _only_set(store)
    assert sorted(k.rsplit("/", 1)[1] for k in found) == sorted(
        [
            layout.DATA_OBJECT,
            layout.TABLES_OBJECT,
            layout.GLOBALS_OBJECT,
            layout.MANIFEST_OBJECT,
            layout.VERIFICATION_OBJECT,
        ]
    )
    assert prefix == layout.set_prefix(h.name, manifest.backup_id)
    assert prefix.startswith(f"{h.name}/{manifest.taken_at[:4]}/")
    verification = Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert verification.status == "verified" and verification.mismatches == 0
    # 8 relations + large objects; rows of the rich schema, all checked
    assert verification.relations_checked == 9
    assert verification.rows_checked == sum(
        v for v in _source_counts(h.source_db).values() if v > 0
    )
    assert (
        manifest.kind == "scheduled" and manifest.data.bytes == found[prefix + layout.DATA_OBJECT]
    )
    # teardowns: scratch database gone, staging cleared after success
    assert (
        psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE 'pgb_verify_{h.name}%'") == "0"
    )
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]
    # the asset event carries the backup's identity: the Assets view is the backup history
    (event,) = asset_events(run)
    assert event["backup_id"] == manifest.backup_id
    assert event["verification"] == "verified"
    assert event["bytes"] == manifest.data.bytes
    values = xcoms(run)
    assert values["verify"]["status"] == "verified"
    assert values["upload"]["data_bytes"] == manifest.data.bytes


def test_s3_set_restores_with_stock_tools(harness_factory, tmp_path, make_db):
    """The uploaded S3 object decrypts with age, decompresses with zstd and restores with pg_restore."""
    h = harness_factory("s3")
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    store = h.storage()
    _, prefix, manifest = _only_set(store)
    bucket, _, base = h.storage_url[5:].partition("/")
    client = h.s3.client()
    head = client.head_object(
        Bucket=bucket, Key=f"{base}/{manifest.data.key}", ChecksumMode="ENABLED"
    )
    assert head["ContentLength"] == manifest.data.bytes
    data = tmp_path / "db.dump.zst.age"
    tables = tmp_path / "tables.json.age"
    client.download_file(bucket, f"{base}/{manifest.data.key}", str(data))
    client.download_file(bucket, f"{base}/{manifest.tables.key}", str(tables))
    key = str(h.age.identity_file)
    dump = tmp_path / "db.dump"
    subprocess.run(f"age -d -i {key} {data} | zstd -d -q -o {dump}", shell=True, check=True)
    listing = json.loads(
        subprocess.run(
            ["age", "-d", "-i", key, str(tables)], check=True, capture_output=True
        ).stdout
    )
    fresh = make_db("pgbt_fresh")
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            PG_USER,
            "-d",
            fresh,
            str(dump),
        ],
        check=True,
    )
    expected = {c.key: c.rows for c in counts_from_json(listing)}
    assert _source_counts(fresh) == expected
    assert expected[("public", "Vote")] == 3000


def test_inserts_during_dump_still_verify_exactly(harness_factory):
    """Rows committed while pg_dump runs are neither counted nor dumped: verification is exact."""
    h = harness_factory("file")
    psql(
        'INSERT INTO public."Vote" ("userId", "candidateId") '
        "SELECT 1 + i % 500, 1 + i % 7 FROM generate_series(1, 400000) i",
        h.source_db,
    )
    stop = threading.Event()
    inserted = [0]

    def writer():
        import psycopg

        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=h.source_db, autocommit=True
        ) as conn:
            while not stop.is_set():
                conn.execute('INSERT INTO public."Vote" ("userId", "candidateId") VALUES (1, 1)')
                conn.execute(
                    'INSERT INTO "Élection Data"."Audit Log" (entry) VALUES (\'{"e": "x"}\')'
                )
                inserted[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.5)
    try:
        run = h.run()
    finally:
        stop.set()
        thread.join(10)
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    store = h.storage()
    _, prefix, _ = _only_set(store)
    verification = Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert verification.status == "verified"
    final = _source_counts(h.source_db)
    # the writer kept going after the snapshot: the source now has more rows than were verified
    assert verification.rows_checked < sum(v for v in final.values() if v > 0)
    assert inserted[0] > 50


def test_emergency_run_is_tagged_and_kept_apart(harness_factory):
    """A manual emergency run with a reason stores a set marked emergency with its keep_days."""
    h = harness_factory("file")
    run = h.run("emergency", conf={"reason": "before the schema migration", "keep_days": 30})
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    _, prefix, manifest = _only_set(h.storage())
    assert manifest.kind == "emergency"
    assert manifest.backup_id.endswith("_emergency")
    assert manifest.emergency is not None
    assert manifest.emergency.reason == "before the schema migration"
    assert manifest.emergency.keep_days == 30
    assert h.storage().exists(prefix + layout.VERIFICATION_OBJECT)


def test_emergency_without_verify_skips_restore(harness_factory):
    """verify=false uploads the set, skips the verification restore and still cleans staging."""
    h = harness_factory("file")
    run = h.run("emergency", conf={"reason": "disk alarm", "verify": False})
    states = task_states(run)
    assert states["upload"] == "success"
    assert states["restore"] == "skipped" and states["verify"] == "skipped"
    assert states["mark_verified"] == "skipped"
    assert states["cleanup_staging"] == "success"
    assert str(run.state) == "success"
    found, prefix, manifest = _only_set(h.storage())
    assert prefix + layout.VERIFICATION_OBJECT not in found
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]


def test_multipart_upload_is_proven_against_the_store(harness_factory):
    """A data object above the part size goes up in parts; the store's composite sha256 matches."""
    h = harness_factory("s3")
    h.write_config(storage={"multipart_chunksize": "5MiB"})
    psql(
        "CREATE TABLE public.noise AS SELECT i, md5(random()::text) || md5(random()::text) AS t "
        "FROM generate_series(1, 400000) i",
        h.source_db,
    )
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    encrypted = xcoms(run)["encrypt"]["data"]
    assert encrypted["bytes"] > 5 * 1024 * 1024
    assert encrypted["composite_sha256"].endswith(f"-{-(-encrypted['bytes'] // (5 * 1024**2))}")
    _, prefix, manifest = _only_set(h.storage())
    bucket, _, base = h.storage_url[5:].partition("/")
    head = h.s3.client().head_object(
        Bucket=bucket, Key=f"{base}/{manifest.data.key}", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"].split("-")[0] == encrypted["composite_sha256"].split("-")[0]
