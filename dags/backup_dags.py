"""pg_backup Airflow DAGs: one set per target in the config file ($PG_BACKUP_CONFIG)."""

from __future__ import annotations

from pg_backup.dags import load_dags

globals().update(load_dags())
