"""dump.jobs > 1: pg_dump -Fd -j under the exported snapshot, packed as one tar, restored -j."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import timedelta

import pytest

from pg_backup.core import layout
from pg_backup.core.counts import counts_from_json
from pg_backup.core.layout import DUMP_DIR
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.stages.runtime import Runtime
from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.integration.conftest import objects, task_states


def _only_set(h):
    store = h.storage()
    found = objects(store)
    manifest_key = next(k for k in found if k.endswith(layout.MANIFEST_OBJECT))
    prefix = manifest_key[: -len(layout.MANIFEST_OBJECT)]
    return store, prefix, Manifest.from_bytes(store.get_bytes(manifest_key))


def _counts(db):
    from pg_backup.adapters.pgconn import PgEndpoint
    from pg_backup.core.counts import count_relations

    with PgEndpoint("x", PG_HOST, PG_PORT, PG_USER, db).connect(autocommit=True) as conn:
        return {c.key: c.rows for c in count_relations(conn.cursor(), [], [])}


def test_jobs2_set_is_verified_and_restores_with_stock_tools(harness_factory, tmp_path, make_db):
    """jobs=2 makes a verified 'directory' set; age | zstd | tar -x and pg_restore -j restore it."""
    h = harness_factory("file")
    h.write_config(dump={"jobs": 2})
    run = h.run()
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    store, prefix, manifest = _only_set(h)
    assert manifest.dump_format == "directory"
    verification = Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert verification.status == "verified" and verification.relations_checked == 9
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]

    (tmp_path / "key.txt").write_text(h.age.secret + "\n")
    data = store.root / prefix / layout.DATA_OBJECT
    subprocess.run(
        f"age -d -i key.txt {data} | zstd -d -q | tar -x", shell=True, check=True, cwd=tmp_path
    )
    unpacked = tmp_path / DUMP_DIR
    assert (unpacked / "toc.dat").is_file()
    fresh = make_db("pgbt_fresh")
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "-j",
            "2",
            "-h",
            PG_HOST,
            "-p",
            str(PG_PORT),
            "-U",
            PG_USER,
            "-d",
            fresh,
            str(unpacked),
        ],
        check=True,
    )
    tables = store.root / prefix / layout.TABLES_OBJECT
    listing = json.loads(
        subprocess.run(
            ["age", "-d", "-i", "key.txt", str(tables)],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        ).stdout
    )
    expected = {c.key: c.rows for c in counts_from_json(listing)}
    assert _counts(fresh) == expected == _counts(h.source_db)
    assert expected[("public", "Vote")] == 3000


def test_jobs2_packed_dump_layout_and_default_is_custom(harness_factory):
    """jobs=2 packs toc.dat first under db.dump.d/; jobs=1 still writes the custom format."""
    from pg_backup.stages.dump import pg_dump_argv, run_dump

    h = harness_factory("file")
    cfg = h.write_config(dump={"jobs": 2})
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    path = run.staging_path / layout.DUMP_FILE
    assert dumped.dump_format == "directory" and dumped.dump.bytes == path.stat().st_size
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[:2] == [DUMP_DIR, f"{DUMP_DIR}/toc.dat"]
    assert all(re.fullmatch(rf"{DUMP_DIR}/[\w.]+", n) for n in names[1:]), names
    assert not (run.staging_path / DUMP_DIR).exists()  # only the packed file stays

    cfg = h.write_config(dump={"jobs": 1})
    assert pg_dump_argv("pg_dump", cfg, "SNAP", "out")[:4] == [
        "pg_dump",
        "--format=custom",
        "--compress=0",
        "--snapshot=SNAP",
    ]
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    assert dumped.dump_format == "custom"
    assert (run.staging_path / layout.DUMP_FILE).read_bytes()[:5] == b"PGDMP"


def test_changed_packed_dump_is_refused_by_restore(harness_factory):
    """A changed byte in the packed dump fails the restore with both hashes, nothing left over."""
    from pg_backup.adapters.staging import StagedFileError
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.restore import restore_staged

    h = harness_factory("file")
    cfg = h.write_config(dump={"jobs": 2})
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    path = run.staging_path / layout.DUMP_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a data file: the tar still parses
    path.write_bytes(bytes(data))
    changed = hashlib.sha256(data).hexdigest()
    with pytest.raises(StagedFileError) as err:
        restore_staged(Runtime(cfg, run), dumped, layout.scratch_db_name(run.backup_id))
    assert changed in str(err.value) and dumped.dump.sha256 in str(err.value)
    assert not (run.staging_path / DUMP_DIR).exists()


def test_jobs2_set_restores_with_the_cli(harness_factory, age_keys, make_db):
    """`pg-backup restore` unpacks a directory set and checks every count."""
    h = harness_factory("file")
    h.write_config(dump={"jobs": 2})
    assert set(task_states(h.run()).values()) == {"success"}
    _, _, manifest = _only_set(h)
    into = make_db("pgbt_cli")
    env = dict(os.environ, PG_BACKUP_CONFIG=str(h.config_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pg_backup.cli",
            "restore",
            h.name,
            manifest.backup_id,
            "--identity",
            str(age_keys.identity_file),
            "--jobs",
            "2",
            "--force",
            "--into",
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={into}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rows exactly as in the snapshot" in done.stdout
    assert _counts(into) == _counts(h.source_db)


def test_jobs2_set_passes_the_restore_drill(harness_factory, age_keys):
    """The weekly drill fetches, decrypts, unpacks and restores a directory set."""
    from pg_backup.dags.drill import build_drill_dag

    os.environ["AIRFLOW_CONN_PGB_TEST_JOBS_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    try:
        h = harness_factory("file")
        cfg = h.write_config(
            dump={"jobs": 2}, encryption={"identity_conn_id": "pgb_test_jobs_identity"}
        )
        assert set(task_states(h.run()).values()) == {"success"}
        h._clock += timedelta(hours=1)
        run = build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock)
        states = task_states(run)
        assert set(states.values()) == {"success"}, states
        store = h.storage()
        key = next(o.key for o in store.list(f"{h.name}/drills/"))
        doc = json.loads(store.get_bytes(key))
        assert doc["outcome"] == "passed" and doc["backups"][0]["counts_ok"]
        left = f"SELECT count(*) FROM pg_database WHERE datname LIKE 'pgb_drill_{h.name}%'"
        assert psql(left) == "0"
    finally:
        os.environ.pop("AIRFLOW_CONN_PGB_TEST_JOBS_IDENTITY", None)
