"""The break-glass command line and the stock-tools recipe, against sets made by the real DAG."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, REPO, pg_conn_json, psql
from tests.integration.conftest import task_states


@pytest.fixture
def backed_up(harness_factory, age_keys):
    """One verified set of the rich schema in file:// storage."""
    h = harness_factory("file")
    os.environ["AIRFLOW_CONN_PG_BACKUP_AGE_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    assert set(task_states(h.run()).values()) == {"success"}
    store = h.storage()
    manifest_key = next(o.key for o in store.list(f"{h.name}/") if o.key.endswith("manifest.json"))
    yield h, manifest_key.split("/")[-2], manifest_key[: -len("manifest.json")]
    os.environ.pop("AIRFLOW_CONN_PG_BACKUP_AGE_IDENTITY", None)


def cli(h, *args, env=None):
    """Run the installed console script the way an operator would (env: extra variables; None unsets one)."""
    full = dict(os.environ, PG_BACKUP_CONFIG=str(h.config_path))
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run(
        [sys.executable, "-m", "pg_backup.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )


def cli_in_process(h, capsys, *args, env=None):
    """``pg_backup.cli.main`` in this process (no interpreter start-up): exit code and output.

    Not for ``check``, which quiets the package's logger for the rest of the process.
    """
    from pg_backup.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PG_BACKUP_CONFIG", str(h.config_path))
        for key, value in (env or {}).items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["pg-backup", *args], code, out, err)


def counts(db):
    rows = psql(
        'SELECT (SELECT count(*) FROM public."Vote"), (SELECT count(*) FROM public."User"),'
        ' (SELECT count(*) FROM "Élection Data"."Audit Log"), '
        "(SELECT count(*) FROM pg_largeobject_metadata)",
        db,
    )
    return rows


def test_list_verify_restore(backed_up, make_db):
    """list shows the verified set; verify proves it; restore rebuilds it with exact counts."""
    h, backup, _ = backed_up
    listed = cli(h, "list", h.name)
    assert listed.returncode == 0, listed.stderr
    line = next(row for row in listed.stdout.splitlines() if row.startswith(backup))
    assert "verified" in line and "scheduled" in line

    verified = cli(h, "verify", h.name, backup)
    assert verified.returncode == 0, verified.stderr
    assert "sha256 matches the manifest" in verified.stdout

    into = f"restored_{backup[-30:].lower()}"
    try:
        done = cli(
            h,
            "restore",
            h.name,
            backup,
            "--into",
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={into}",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "rows exactly as in the snapshot" in done.stdout
        assert counts(into) == counts(h.source_db)
        # a second restore into the now non-empty database is refused without --force
        again = cli(
            h,
            "restore",
            h.name,
            backup,
            "--into",
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={into}",
        )
        assert again.returncode == 2
        assert "exists and holds" in again.stderr and "--force" in again.stderr
        assert counts(into) == counts(h.source_db)
        forced = cli(
            h,
            "restore",
            h.name,
            backup,
            "--force",
            "--into",
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={into}",
        )
        assert forced.returncode == 0, forced.stdout + forced.stderr
    finally:
        psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)')


def test_restore_refuses_the_source(backed_up):
    """restore never writes into the source database, even when asked to."""
    h, backup, _ = backed_up
    os.environ["AIRFLOW_CONN_PGB_INTO_SOURCE"] = pg_conn_json(h.source_db)
    done = cli(h, "restore", h.name, backup, "--force", "--into", "pgb_into_source")
    assert done.returncode != 0
    assert "source database" in done.stderr
    assert counts(h.source_db).startswith("3000|")


def test_verify_with_wrong_key_fails_clearly(backed_up, tmp_path):
    """verify with a key file that is not a recipient fails naming the recipients."""
    from pyrage import x25519

    h, backup, _ = backed_up
    key = tmp_path / "other.txt"
    key.write_text(str(x25519.Identity.generate()) + "\n")
    done = cli(h, "verify", h.name, backup, "--identity", str(key))
    assert done.returncode == 2  # an operator's mistake: one line, exit 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert h.age.public in done.stderr and "AGE-SECRET-KEY" not in done.stderr


def test_readme_stock_tools_recipe_restores(backed_up, tmp_path):
    """The README's stock-tools block, run as written, restores the set with the same counts and locale."""
    h, _, prefix = backed_up
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- stock-restore[^>]*-->\s*```sh\n(.*?)```", readme, re.S).group(1)
    store = h.storage()
    for obj in (store.root / prefix).iterdir():  # what step 2 copies: every object of the set
        shutil.copy(obj, tmp_path / obj.name)
    shutil.copy(h.age.identity_file, tmp_path / "key.txt")
    psql('DROP DATABASE IF EXISTS "restored_voting" WITH (FORCE)')
    env = dict(os.environ, PGHOST=PG_HOST, PGPORT=str(PG_PORT), PGUSER=PG_USER)
    try:
        subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=300,
        )
        assert counts("restored_voting") == counts(h.source_db)
        locale = "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = "
        assert psql(locale + "'restored_voting'") == psql(locale + f"'{h.source_db}'")
    finally:
        psql('DROP DATABASE IF EXISTS "restored_voting" WITH (FORCE)')
