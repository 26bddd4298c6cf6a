"""The FastAPI app of the Backups page, its JSON and the Prometheus metrics.

Mounted by the api-server under ``/pg-backup`` (``web.URL_PREFIX``):

* ``GET /pg-backup/``                   the page (the UI's Browse > Backups shows it in a frame)
* ``GET /pg-backup/api/targets``        every readable target's headline and sets, as JSON
* ``GET /pg-backup/api/targets/{name}`` one target (404 unknown, 403 not readable)
* ``GET /pg-backup/metrics``            Prometheus text (a login, or the scrape token)
* ``GET /pg-backup/static/...``         stylesheet, script, icon (no data: not protected)

Every data route needs a login (``web.access``); each shows only the targets whose DAGs the
user may read.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from pg_backup.core.config import Config, load_config
from pg_backup.core.errors import ConfigError
from pg_backup.web import URL_PREFIX, prometheus
from pg_backup.web.access import Reader, metrics_reader, require_any, user_reader
from pg_backup.web.view import (
    STAGES,
    human_bytes,
    human_duration,
    metric_samples,
    target_views,
)

HERE = Path(__file__).parent
# Module level: the routes' annotations are strings (future import) resolved in this namespace.
UserDep = Annotated[Reader, Depends(user_reader)]
MetricsDep = Annotated[Reader, Depends(metrics_reader)]


def utcnow() -> datetime:
    """The wall clock: ages are shown as of the request."""
    return datetime.fromtimestamp(time.time(), UTC)


def _config() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, exc.summary) from None


def _one_target(config: Config, reader: Reader, name: str) -> list[str]:
    """``[name]`` if it is a target the reader may read (404 unknown, 403 not readable)."""
    if name not in config.targets:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no backup target {name!r}")
    if not reader.may_read([name]):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"{reader.name} may not read the DAGs of {name!r}"
        )
    return [name]


def _airflow_root(request: Request) -> str:
    """The api-server's own root path (the page's links go to Airflow's UI pages)."""
    return str(request.scope.get("root_path", "")).removesuffix(URL_PREFIX)


def create_app() -> FastAPI:
    """The app the plugin mounts (built on the first request: see ``web.LazyApp``)."""
    app = FastAPI(title="pg_backup Backups page", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["bytes"] = human_bytes
    templates.env.filters["duration"] = human_duration
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, reader: UserDep, target: str | None = None) -> Any:
        """The Backups page: every readable target, or only ``?target=<name>``."""
        config = _config()
        now = utcnow()
        if target is None:
            names = require_any(reader, list(config.targets))
        else:
            names = _one_target(config, reader, target)
        views = target_views([config.targets[n] for n in names], _airflow_root(request), now)
        return templates.TemplateResponse(
            request,
            "backups.html",
            {
                "views": views,
                "user": reader.name,
                "now": now,
                "stages": STAGES,
                "static": f"{request.scope.get('root_path', '')}/static",
            },
        )

    @app.get("/api/targets")
    def targets(request: Request, reader: UserDep) -> JSONResponse:
        """Every readable target as JSON (what the page shows)."""
        config = _config()
        names = require_any(reader, list(config.targets))
        views = target_views([config.targets[n] for n in names], _airflow_root(request), utcnow())
        return JSONResponse([v.to_json() for v in views])

    @app.get("/api/targets/{name}")
    def target(name: str, request: Request, reader: UserDep) -> JSONResponse:
        """One target as JSON."""
        config = _config()
        [view] = target_views(
            [config.targets[n] for n in _one_target(config, reader, name)],
            _airflow_root(request),
            utcnow(),
        )
        return JSONResponse(view.to_json())

    @app.get("/metrics")
    def metrics(reader: MetricsDep) -> Response:
        """Prometheus text: the readable targets' metrics (the scrape token reads all)."""
        config = _config()
        names = require_any(reader, list(config.targets))
        samples = metric_samples([config.targets[n] for n in names], utcnow())
        return Response(prometheus.render(samples), media_type=prometheus.CONTENT_TYPE)

    return app
