"""`pg-backup pools` against a real Airflow metadata database; the DAG puts dump and restore in them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pg_backup.core.config import parse_config
from pg_backup.core.names import Stage
from pg_backup.core.pools import scratch_pool, source_pool
from tests.integration.fake_sets import RECIPIENT


def write_config(path: Path, source_slots: int) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "scratch_conn_id": "pgb_pool_scratch",
                    "storage": {"url": "file:///srv/pg_backup"},
                    "encryption": {"recipients": [RECIPIENT]},
                    "pools": {"source_server": "db1:5432", "source_slots": source_slots},
                },
                "targets": {
                    "pa": {"source_conn_id": "pa_db"},
                    "pb": {"source_conn_id": "pb_db", "drill": {"standby_conn_id": "pb_standby"}},
                },
            }
        )
    )


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "pg-backup"), "--config", str(config), "pools", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )


def test_pools_command_creates_checks_and_resizes(airflow_db: Path, tmp_path: Path) -> None:
    """Check finds them missing (exit 1); create makes them; check passes; a new size is reported."""
    config = tmp_path / "pg_backup.yaml"
    write_config(config, source_slots=1)
    first = cli(config, "--check")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "missing  pg_backup_source_db1_5432: 1 slot(s) (absent), targets pa, pb" in first.stdout

    made = cli(config)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "created  pg_backup_source_db1_5432" in made.stdout
    assert "pg_backup_scratch_pgb_pool_scratch: 2 slot(s)" in made.stdout
    # The second target's drill restores on a standby server: a pool of its own.
    assert "created  pg_backup_scratch_pb_standby: 2 slot(s), targets pb" in made.stdout
    assert cli(config, "--check").returncode == 0

    from airflow.models.pool import Pool

    assert Pool.get_pool("pg_backup_source_db1_5432").slots == 1

    write_config(config, source_slots=3)
    differs = cli(config, "--check")
    assert differs.returncode == 1
    assert "differs  pg_backup_source_db1_5432: 3 slot(s) (has 1)" in differs.stdout
    resized = cli(config)
    assert "resized  pg_backup_source_db1_5432: 3 slot(s) (was 1)" in resized.stdout
    assert Pool.get_pool("pg_backup_source_db1_5432").slots == 3


def test_backup_dag_puts_dump_and_restore_in_their_server_pools(tmp_path: Path) -> None:
    """Dump waits in the source server's pool, restore in the scratch server's, one slot each."""
    from pg_backup.core.names import DrillTask
    from pg_backup.dags.backup import build_backup_dag
    from pg_backup.dags.drill import build_drill_dag

    config = tmp_path / "pg_backup.yaml"
    write_config(config, source_slots=1)
    with config.open() as handle:
        cfg = parse_config(yaml.safe_load(handle)).target("pa")
    for kind in ("scheduled", "emergency"):
        dag = build_backup_dag(cfg, kind)
        dump, restore = dag.get_task(Stage.DUMP.value), dag.get_task(Stage.RESTORE.value)
        assert (dump.pool, dump.pool_slots) == (source_pool(cfg), 1)
        assert dump.pool == "pg_backup_source_db1_5432"
        assert (restore.pool, restore.pool_slots) == (scratch_pool(cfg), 1)
        others = {t.pool for t in dag.tasks if t.task_id not in (Stage.DUMP, Stage.RESTORE)}
        assert others == {"default_pool"}
    # The drill's restore shares the scratch server's pool with the verification restores.
    drill = build_drill_dag(cfg)
    assert drill.get_task(DrillTask.RESTORE.value).pool == scratch_pool(cfg)
    others = {t.pool for t in drill.tasks if t.task_id != DrillTask.RESTORE.value}
    assert others == {"default_pool"}
