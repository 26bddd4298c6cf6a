"""deploy/compose/seed-source.sh against the real PostgreSQL: the compose source-seed step."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.deploy.composefile import REPO

pytestmark = pytest.mark.integration

SEED_SCRIPT = REPO / "deploy" / "compose" / "seed-source.sh"


@pytest.fixture
def names(pg_server: None) -> Iterator[tuple[str, str]]:
    """A unique sample database and backup login, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    db, login = f"pgbt_seed_{suffix}", f"pgbt_seed_login_{suffix}"
    yield db, login
    psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    psql(f'DROP ROLE IF EXISTS "{login}"')


def run_seed(db: str, login: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO / "plugins"),
        "PGHOST": PG_HOST,
        "PGPORT": str(PG_PORT),
        "PGUSER": PG_USER,
        "SAMPLE_DB": db,
        "BACKUP_LOGIN": login,
        "SAMPLE_VOTES": "500",
        "SOURCE_BACKUP_PASSWORD": "it's a throwaway",
    }
    out = subprocess.run(
        ["bash", str(SEED_SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_seed_builds_once_and_its_login_can_dump_but_not_write(
    names: tuple[str, str], tmp_path: Path
) -> None:
    """The sample is built once; the backup login can pg_dump it and cannot change it."""
    db, login = names
    assert "created database" in run_seed(db, login)
    psql("INSERT INTO \"Position\" (id, title) VALUES (-1, 'marker')", db)
    assert "exists: kept" in run_seed(db, login)
    assert psql('SELECT count(*) FROM "Position" WHERE id = -1', db) == "1"

    as_login = {**os.environ, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": login}
    dump = subprocess.run(
        ["pg_dump", "-Fc", "-f", str(tmp_path / "db.dump"), db],
        env=as_login,
        capture_output=True,
        text=True,
    )
    assert dump.returncode == 0, dump.stderr
    write = subprocess.run(
        ["psql", "-X", "-d", db, "-c", 'DELETE FROM "Vote"'],
        env=as_login,
        capture_output=True,
        text=True,
    )
    assert write.returncode != 0 and "permission denied" in write.stderr
