"""Airflow plugin of pg_backup: the stage-budget listener."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pg_backup import budgets


class PgBackupPlugin(AirflowPlugin):
    """Registers the listener that mails when a backup stage ends over its time budget."""

    name = "pg_backup"
    listeners = [budgets]
