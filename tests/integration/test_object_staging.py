"""Object-store staging (``staging_url``) on the S3 test server: workers that share no disk.

Each stage gets a fresh local ``staging_dir`` (as a different worker would), so only what went
through the store can reach the next stage.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pg_backup.core import layout
from pg_backup.core.manifest import Verification
from tests.integration.conftest import objects, task_states, xcoms


def staged_keys(h: Any, bucket: str) -> list[str]:
    """Keys in the staging bucket, without the marker preflight overwrites each run."""
    client = h.s3.client()
    found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return [o["Key"] for o in found if not o["Key"].endswith("/.preflight")]


@pytest.fixture
def object_staged(harness_factory: Any) -> tuple[Any, str]:
    h = harness_factory("s3")
    bucket = h.s3.new_bucket()
    h.write_config(staging_url=f"s3://{bucket}/staging", storage={"multipart_chunksize": "5MiB"})
    return h, bucket


def test_run_verifies_through_object_staging_and_leaves_nothing(object_staged):
    """A scheduled run stages in the bucket, verifies, and its teardown removes every staged object."""
    h, bucket = object_staged
    run = h.run()
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    values = xcoms(run)
    assert values["verify"]["status"] == "verified"
    store = h.storage()
    (manifest_key,) = [k for k in objects(store) if k.endswith(layout.MANIFEST_OBJECT)]
    prefix = manifest_key[: -len(layout.MANIFEST_OBJECT)]
    verification = Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert verification.status == "verified" and verification.mismatches == 0
    assert staged_keys(h, bucket) == []
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]
    uploads = h.s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []


def test_stages_on_workers_without_shared_disk_hand_over_through_the_store(
    object_staged, tmp_path: Path
):
    """Each stage on its own local disk: files cross only through the bucket; restore says it copies locally."""
    from pg_backup.core.config import load_config
    from pg_backup.stages.compress import compress_dump
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.encrypt import encrypt_set
    from pg_backup.stages.mark_verified import mark_verified
    from pg_backup.stages.restore import create_scratch_db, drop_scratch_db, restore_staged
    from pg_backup.stages.runtime import Runtime
    from pg_backup.stages.upload import upload_set
    from pg_backup.stages.verify import verify_restore

    h, bucket = object_staged
    info = h.run_info()
    base = load_config(h.config_path).target(h.name)

    def worker(n: int) -> Runtime:
        # Another worker: its own staging_dir, nothing of the others' local files.
        local = tmp_path / f"worker{n}"
        cfg = base.model_copy(update={"staging_dir": str(local)})
        run = info.model_copy(update={"staging": str(local / h.name / info.backup_id)})
        return Runtime(cfg, run)

    dumped = run_dump(worker(1))
    assert not [p for p in (tmp_path / "worker1").rglob("*") if p.is_file()]
    keys = staged_keys(h, bucket)
    assert f"staging/{h.name}/{info.backup_id}/{layout.DUMP_FILE}" in keys
    compressed = compress_dump(worker(2), dumped.dump)
    encrypted = encrypt_set(worker(3), compressed, dumped.tables, dumped.globals)
    uploaded = upload_set(worker(4), dumped, encrypted)
    database = create_scratch_db(worker(5), dumped.database)
    try:
        said: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger("pg_backup.adapters.run_staging")
        logger.addHandler(handler)
        try:
            restored = restore_staged(worker(5), dumped, database, made_in=dumped.database)
        finally:
            logger.removeHandler(handler)
        assert any("to local disk" in line and "pg_restore -j" in line for line in said), said
        verification = verify_restore(worker(6), dumped, restored)
        assert verification.status == "verified"
    finally:
        drop_scratch_db(worker(5))
    # mark_verified on yet another worker finds the record verify staged (given no XCom of it,
    # as after a failed proof) and stores it beside the manifest.
    stored, held = mark_verified(worker(7), [uploaded], None)
    assert stored == verification and held == [uploaded]
    record = h.storage().get_bytes(layout.set_prefix(h.name, info.backup_id) + "verification.json")
    assert Verification.from_bytes(record) == verification
    assert not [p for n in range(1, 8) for p in (tmp_path / f"worker{n}").rglob("*") if p.is_file()]
    # dump, tables, globals, compressed, three encrypted, and verify's record
    assert worker(8).staging.remove().startswith("removed 8 staged object(s)")
    assert staged_keys(h, bucket) == []


def test_changed_staged_object_is_refused_and_a_failed_write_leaves_nothing(object_staged):
    """A staged object whose bytes changed fails the next stage; an aborted write leaves no object."""
    from pg_backup.core.config import load_config
    from pg_backup.core.errors import StagedFileError
    from pg_backup.stages.compress import compress_dump
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.runtime import Runtime

    h, bucket = object_staged
    info = h.run_info()
    rt = Runtime(load_config(h.config_path).target(h.name), info)
    dumped = run_dump(rt)
    key = f"staging/{h.name}/{info.backup_id}/{layout.DUMP_FILE}"
    client = h.s3.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[100] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(StagedFileError, match="changed after its stage wrote it"):
        compress_dump(rt, dumped.dump)
    assert f"staging/{h.name}/{info.backup_id}/{layout.COMPRESSED_FILE}" not in staged_keys(
        h, bucket
    )

    def killed_while_writing() -> None:
        with rt.staging.writer("half") as out:
            out.write(b"x" * (6 * 1024 * 1024))  # one full part sent
            raise RuntimeError("stage killed")

    with pytest.raises(RuntimeError):
        killed_while_writing()
    assert f"staging/{h.name}/{info.backup_id}/half" not in staged_keys(h, bucket)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_sweep_removes_staged_objects_of_stale_runs_only(object_staged):
    """Objects of runs untouched since the cutoff go (and their stale uploads); newer runs stay."""
    import time
    from datetime import UTC, datetime

    from pg_backup.adapters.run_staging import sweep_runs
    from pg_backup.core.config import load_config

    h, bucket = object_staged
    cfg = load_config(h.config_path).target(h.name)
    client = h.s3.client()
    old, new = f"{h.name}_20260101T020000Z_scheduled", f"{h.name}_20260102T020000Z_scheduled"
    for name in ("db.dump", "db.dump.zst"):
        client.put_object(Bucket=bucket, Key=f"staging/{h.name}/{old}/{name}", Body=b"x")
    stale = client.create_multipart_upload(
        Bucket=bucket, Key=f"staging/{h.name}/{old}/db.dump.zst.age"
    )
    time.sleep(1.5)
    cutoff = datetime.now(UTC)
    time.sleep(1.5)
    client.put_object(Bucket=bucket, Key=f"staging/{h.name}/{new}/db.dump", Body=b"y")
    assert sweep_runs(cfg, cutoff) == [old]
    assert staged_keys(h, bucket) == [f"staging/{h.name}/{new}/db.dump"]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert stale["UploadId"] not in [u["UploadId"] for u in uploads]


def test_preflight_proves_the_staging_bucket_takes_an_object(object_staged):
    """Preflight writes its marker to the staging bucket; a bucket that is not there fails it, named."""
    from pg_backup.core.config import load_config
    from pg_backup.core.errors import StorageError
    from pg_backup.stages.preflight import Preflight
    from pg_backup.stages.runtime import Runtime

    h, bucket = object_staged
    cfg = load_config(h.config_path).target(h.name)
    preflight = Preflight(Runtime(cfg, h.run_info()))
    preflight.estimated = 1
    assert preflight.staging().startswith(f"s3://{bucket}/staging writable")
    assert f"staging/{h.name}/.preflight" in [
        o["Key"] for o in h.s3.client().list_objects_v2(Bucket=bucket)["Contents"]
    ]
    missing = cfg.model_copy(update={"staging_url": "s3://pgbt-no-such-bucket/staging"})
    with pytest.raises(StorageError, match="pgbt-no-such-bucket"):
        Preflight(Runtime(missing, h.run_info())).staging()


def test_a_staged_part_fills_on_disk_not_in_memory(object_staged):
    """The writer spools each part in the worker's directory: a part's bytes are never held in
    memory (64 MiB parts cost a compress stage 402 MB of peak RSS when they were), and what it
    sends is exactly what was written."""
    import tracemalloc

    from pg_backup.core.config import load_config
    from pg_backup.stages.runtime import Runtime

    h, bucket = object_staged
    info = h.run_info()
    rt = Runtime(load_config(h.config_path).target(h.name), info)
    chunk = bytes(range(256)) * 4096  # 1 MiB
    tracemalloc.start()
    try:
        with rt.staging.writer("spooled") as out:
            for _ in range(4):  # 4 MiB of a 5 MiB part: nothing sent yet
                out.write(chunk)
            held = sum(
                stat.size
                for stat in tracemalloc.take_snapshot()
                .filter_traces([tracemalloc.Filter(True, "*/adapters/run_staging.py")])
                .statistics("filename")
            )
            for _ in range(8):  # then one full part sent, and the rest at the end
                out.write(chunk)
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, f"{held} bytes held by the writer"
    key = f"staging/{h.name}/{info.backup_id}/spooled"
    stored = h.s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored == chunk * 12
