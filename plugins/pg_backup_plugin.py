"""Airflow plugin of pg_backup: the stage-budget listener and the Backups page.

The page and its metrics are a FastAPI app that the api-server mounts under ``/pg-backup``,
behind the api-server's own login and DAG authorization (``pg_backup.web.access``); the UI's
Browse menu gets a "Backups" entry that shows it. The app is built on its first request, so
other Airflow processes (scheduler, task processes) that load plugins do not pay for it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pg_backup import budgets
from pg_backup.web import NAV_ENTRY, URL_PREFIX, asgi_app


class PgBackupPlugin(AirflowPlugin):
    """Registers the budget listener, the Backups page app and its navigation entry."""

    name = "pg_backup"
    listeners = [budgets]
    fastapi_apps = [{"app": asgi_app, "url_prefix": URL_PREFIX, "name": "pg_backup Backups page"}]
    external_views = [NAV_ENTRY]
