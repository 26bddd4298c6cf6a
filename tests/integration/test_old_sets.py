"""Sets written by an earlier release still list, drill and restore with today's code.

The writer is the real code of commit 21d64d2 (the last release before the package was split
into layers), taken from this repository's history with ``git archive`` and run in a child
process: its dump, compress, encrypt, upload, restore and verify stages make one verified set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO, psql
from tests.integration.conftest import task_states
from tests.integration.test_cli import cli, counts

OLD_RELEASE = "21d64d2"

WRITE_OLD_SET = """
import sys
from datetime import datetime
from pg_backup import layout
from pg_backup.config import load_config
from pg_backup.dump import run_dump
from pg_backup.compress import compress_dump
from pg_backup.encrypt import encrypt_set
from pg_backup.upload import upload_set
from pg_backup.restore import create_scratch_db, restore_staged
from pg_backup.verify import verify_counts

config, target, staging, when = sys.argv[1:]
cfg = load_config(config).target(target)
taken = datetime.fromisoformat(when)
backup = layout.backup_id(target, taken, "scheduled")
run = layout.RunInfo(target, "scheduled", backup, taken.isoformat(), "pg_backup_" + target,
                     "scheduled__" + when, staging + "/" + target + "/" + backup)
dumped = run_dump(cfg, run)
compressed = compress_dump(cfg, run, dumped.dump)
data, tables = encrypt_set(cfg, run, compressed, dumped.tables)
upload_set(cfg, run, dumped, data, tables)
database = create_scratch_db(cfg, run, dumped.encoding)
restored = restore_staged(cfg, run, dumped.dump, database)
record = verify_counts(cfg, run, dumped, database, restored.seconds)
print(backup, record.status)
"""


@pytest.fixture
def old_code(tmp_path: Path) -> Path:
    """The package as released in OLD_RELEASE, extracted from git history."""
    dest = tmp_path / "old"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_RELEASE, "plugins/pg_backup"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "plugins"


def test_a_set_written_by_the_old_release_lists_drills_and_restores(
    harness_factory, age_keys, old_code, tmp_path
):
    """Old code writes a verified set; new code lists it verified, drills it, restores it."""
    h = harness_factory("file")
    cfg = h.write_config(encryption={"identity_conn_id": "pgb_old_identity"})
    os.environ["AIRFLOW_CONN_PGB_OLD_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    h._clock += timedelta(hours=1)
    env = dict(os.environ, PYTHONPATH=str(old_code))
    written = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(WRITE_OLD_SET),
            str(h.config_path),
            h.name,
            str(h.staging_dir),
            h._clock.isoformat(),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    backup, status = written.stdout.split()[-2:]
    assert status == "verified"
    psql(f'DROP DATABASE IF EXISTS "pgb_verify_{backup.lower()}" WITH (FORCE)')

    listed = cli(h, "list", h.name)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(backup))
    assert " verified " in line

    from pg_backup.dags.drill import build_drill_dag

    h._clock += timedelta(hours=1)
    run = build_drill_dag(cfg).test(
        run_after=h._clock, logical_date=h._clock, run_conf={"backup_id": backup}
    )
    assert set(task_states(run).values()) == {"success"}, task_states(run)

    into = f"pgb_old_into_{h.name}"
    try:
        done = cli(h, "restore", h.name, backup, "--into", f"dbname={into}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verified" in done.stdout
        assert counts(into) == counts(h.source_db)
    finally:
        psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)')
        os.environ.pop("AIRFLOW_CONN_PGB_OLD_IDENTITY", None)
