"""Faults of the machine and the source, each ending clearly: a full disk, a killed pg_dump, a
migration during the dump, compressible data that fills staging, a drill with nothing to drill.

A full disk is real: the stage's ``*.part`` output is a symlink to ``/dev/full``, where every
write fails with ENOSPC from the kernel.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from pg_backup.core import layout
from pg_backup.core.errors import StagedFileError, ToolFailed
from pg_backup.stages.runtime import Runtime
from tests.conftest import psql
from tests.integration.conftest import task_states
from tests.integration.test_failures import SMALL_SCHEMA
from tests.integration.test_secrets import hold_probe

# Highly compressible values: TOAST stores each 200 kB text in a few kB.
COMPRESSIBLE = """
CREATE TABLE public.notes (id int PRIMARY KEY, body text);
INSERT INTO public.notes SELECT i, repeat('vote counted; ', 15000) FROM generate_series(1, 300) i;
"""


def test_preflight_estimates_compressible_data_as_pg_dump_will_write_it(harness_factory):
    """60 MB of text stored in under 2 MB: the estimate is near the dump's size, not the disk's."""
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.preflight import run_preflight

    h = harness_factory("file", schema=COMPRESSIBLE)
    cfg = h.write_config()
    run = h.run_info()
    on_disk = int(psql("SELECT pg_table_size('public.notes')", h.source_db))
    checked = run_preflight(Runtime(cfg, run))
    dumped = run_dump(Runtime(cfg, run))
    assert dumped.dump.bytes > 30 * on_disk  # the fault: on-disk size is far too low
    assert 0.9 * dumped.dump.bytes < checked.estimated_bytes < 1.5 * dumped.dump.bytes, (
        checked.estimated_bytes,
        dumped.dump.bytes,
    )


def test_full_staging_disk_names_the_path_in_python_stages_and_in_pg_dump(harness_factory):
    """ENOSPC while compressing and while pg_dump writes: each error names the file and the fix; no part file is left."""
    from pg_backup.adapters.streams import compress_file
    from pg_backup.stages.dump import run_dump

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    target = run.staging_path / layout.COMPRESSED_FILE
    part = target.with_name(target.name + ".part")
    part.symlink_to("/dev/full")
    with pytest.raises(StagedFileError) as err:
        compress_file(run.staging_path / layout.DUMP_FILE, dumped.dump, target)
    assert f"no space left on device writing {target}" in str(err.value), str(err.value)
    assert "staging_dir" in str(err.value)
    assert not part.exists() and not part.is_symlink() and not target.exists()

    run2 = h.run_info()
    run2.staging_path.mkdir(parents=True)
    dump_part = run2.staging_path / (layout.DUMP_FILE + ".part")
    dump_part.symlink_to("/dev/full")
    # pg_dump writes to a pipe; the package's copy to staging meets the full disk.
    with pytest.raises(StagedFileError) as failed:
        run_dump(Runtime(cfg, run2))
    assert f"no space left on device writing {dump_part}" in str(failed.value), str(failed.value)
    assert "staging_dir" in str(failed.value)
    assert not dump_part.is_symlink() and not (run2.staging_path / layout.DUMP_FILE).exists()


def test_sigkilled_pg_dump_says_so(harness_factory):
    """pg_dump killed with SIGKILL (the OOM killer's signal) fails the dump saying 'was killed by SIGKILL'."""
    from pg_backup.stages.dump import run_dump

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    release = hold_probe(h.source_db)  # pg_dump waits on this lock, long enough to be killed
    box: dict[str, Any] = {}

    def dump() -> None:
        try:
            run_dump(Runtime(cfg, run))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            box["error"] = exc

    worker = threading.Thread(target=dump)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        killed = False
        while not killed and time.monotonic() < deadline:
            for proc in psutil.Process().children(recursive=True):
                try:
                    argv = proc.cmdline()
                except psutil.Error:
                    continue
                if proc.name() == "pg_dump" and any(a.startswith("--snapshot=") for a in argv):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
            time.sleep(0.05)
        assert killed, "pg_dump never seen"
        worker.join(60)
    finally:
        release()
    error = box.get("error")
    assert isinstance(error, ToolFailed), error
    assert "pg_dump was killed by SIGKILL" in error.summary, error.summary
    assert not list(run.staging_path.glob("*.part"))


def test_a_migration_during_the_dump_waits_for_it_and_the_counts_stay_exact(harness_factory):
    """ALTER TABLE issued while pg_dump runs cannot take the table (it times out); the dump's counts are the snapshot's, and the migration goes through afterwards."""
    import psycopg

    from pg_backup.stages.dump import run_dump
    from tests.conftest import PG_HOST, PG_PORT, PG_USER

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    probe = hold_probe(h.source_db)  # pg_dump, its tables locked, waits on the probe
    released: list[bool] = []

    def release() -> None:
        if not released:
            released.append(True)
            probe()

    box: dict[str, Any] = {}

    def dump() -> None:
        try:
            box["result"] = run_dump(Runtime(cfg, run))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            box["error"] = exc

    worker = threading.Thread(target=dump)
    worker.start()
    migration = psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=h.source_db, autocommit=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _dumping():
            time.sleep(0.05)
        assert _dumping(), "pg_dump never seen"
        time.sleep(1.0)  # pg_dump has locked its tables and waits on the probe
        migration.execute("SET lock_timeout = '1s'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            migration.execute("ALTER TABLE public.audit ADD COLUMN note text")
        release()
        worker.join(60)
        assert not worker.is_alive()
        assert "error" not in box, box.get("error")
        assert box["result"].rows == 550  # 400 votes + 150 audit rows, as in the snapshot
        migration.execute("ALTER TABLE public.audit ADD COLUMN note text")  # now it can
    finally:
        release()
        migration.close()


def _dumping() -> bool:
    """A pg_dump child of this process is dumping (not the --version probe)."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.name() == "pg_dump" and any(
                a.startswith("--snapshot=") for a in proc.cmdline()
            ):
                return True
        except psutil.Error:
            continue
    return False


def test_a_drill_with_nothing_to_drill_still_stores_and_mails_its_report(harness_factory):
    """No verified set in storage: the drill's report is stored and mailed, failed, with the cause in one line."""
    import json
    from datetime import timedelta

    from pg_backup.dags.drill import build_drill_dag

    h = harness_factory("file", schema="")
    cfg = h.write_config()
    h.mail.clear()
    h._clock += timedelta(hours=1)
    run = build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock)
    states = task_states(run)
    assert states["choose"] == "success" and states["report"] == "failed", states
    store = h.storage()
    (key,) = [o.key for o in store.list(f"{h.name}/drills/")]
    doc = json.loads(store.get_bytes(key))
    assert doc["outcome"] == "failed" and doc["backups"] == []
    assert doc["error"] == "no verified backup in storage: nothing to drill"
    (mail,) = [m for m in h.mail.messages if "restore drill" in str(m["Subject"])]
    assert str(mail["Subject"]).endswith(": no verified backup in storage: nothing to drill")
