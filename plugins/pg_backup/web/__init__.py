"""The Backups page and the metrics endpoint: a FastAPI app the Airflow api-server mounts.

``plugins/pg_backup_plugin.py`` registers ``asgi_app`` under ``URL_PREFIX`` (``fastapi_apps``)
and ``NAV_ENTRY`` (``external_views``: "Backups" under Browse, the page in an iframe). Plugins are
imported by every Airflow process, task processes included, so this module stays light: the
FastAPI app (``web.app``) is built on the first request the api-server passes on.
"""

from __future__ import annotations

from typing import Any

URL_PREFIX = "/pg-backup"

NAV_ENTRY: dict[str, Any] = {
    "name": "Backups",
    "href": f"{URL_PREFIX}/",
    "url_route": "backups",  # the UI shows the page at /plugin/backups
    "destination": "nav",
    "category": "browse",
    "icon": f"{URL_PREFIX}/static/icon.svg",
}


class LazyApp:
    """An ASGI app that builds ``web.app.create_app()`` when it is first called."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Hand the request to the real app (built once)."""
        if self._app is None:
            from pg_backup.web.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)

    def __repr__(self) -> str:
        return "pg_backup.web.app:create_app (built on first request)"


asgi_app = LazyApp()
