"""A killed dump task takes its pg_dump child with it (no orphan holding a snapshot and locks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg

from tests.conftest import PG_HOST, PG_PORT, PG_USER, REPO, psql


def test_killed_task_process_kills_pg_dump(make_db, tmp_path):
    """SIGKILL of the process running the dump stage ends pg_dump too (PR_SET_PDEATHSIG)."""
    db = make_db("pgbt_kill")
    psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE SEQUENCE probe", db)
    locker = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db)
    locker.execute("DROP SEQUENCE probe")  # uncommitted: pg_dump waits on this lock
    script = textwrap.dedent(f"""
        from pg_backup.core.config import parse_config
        from pg_backup.stages.dump import run_dump
        from pg_backup.stages.runtime import Runtime
        from pg_backup.core.layout import RunInfo
        from pg_backup.adapters.pgconn import PgEndpoint
        from pyrage import x25519
        cfg = parse_config({{"targets": {{"k": {{
            "source_conn_id": "src", "scratch_conn_id": "scr",
            "storage": {{"url": "file://{tmp_path}/s"}},
            "encryption": {{"recipients": [str(x25519.Identity.generate().to_public())]}},
            "dump": {{"lock_wait_timeout": "5m"}}}}}}}}).target("k")
        run = RunInfo(target="k", kind="scheduled", backup_id="k_20260101T000000Z_scheduled",
                      taken_at="2026-01-01T00:00:00+00:00", dag_id="d", run_id="r",
                      staging="{tmp_path}/staging")
        source = PgEndpoint("src", "{PG_HOST}", {PG_PORT}, "{PG_USER}", "{db}")
        run_dump(Runtime(cfg, run, source=source))
    """)
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'plugins'}{os.pathsep}{REPO}")
    task = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while time.monotonic() < deadline and not pids:
            time.sleep(0.3)
            pids = [
                int(p)
                for p in subprocess.run(
                    ["pgrep", "-P", str(task.pid), "pg_dump"], capture_output=True, text=True
                ).stdout.split()
            ]
        assert pids, "pg_dump never started under the task process"
        os.kill(task.pid, signal.SIGKILL)
        task.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.2)
        alive = [
            p
            for p in pids
            if os.path.exists(f"/proc/{p}")
            and "zombie" not in open(f"/proc/{p}/status").read().lower()
        ]
        assert not alive, f"pg_dump {alive} outlived the killed task"
    finally:
        if task.poll() is None:
            task.kill()
        locker.rollback()
        locker.close()
    assert not list((tmp_path / "staging").glob("**/db.dump"))
