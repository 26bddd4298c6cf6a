"""Who may see what: the api-server's own authentication and DAG authorization.

Airflow does not protect a plugin's FastAPI app, so every route depends on Airflow's own
``get_user`` (the JWT in ``Authorization: Bearer`` or the UI's ``_token`` cookie: no credential
is 401, a bad one 403) and asks the configured auth manager which DAGs the user may read, as
Airflow's own list routes do (``get_authorized_dag_ids``). A user sees a target only if they may
read every DAG of it (backup, emergency, drill, sweep): the page shows facts from all four.

The metrics endpoint also accepts a scrape token for Prometheus (whose scrapes cannot log in):
the password of the Airflow connection ``pg_backup_metrics``, if it exists; it sees every target.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials

from pg_backup.core.names import METRICS_TOKEN_CONN_ID, dag_ids

log = logging.getLogger(__name__)

TOKEN_CACHE_SECONDS = 60.0
_token_cache: tuple[float, str | None] = (0.0, None)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def _airflow_user(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Any:
    """Airflow's own ``get_user``: bearer token first, then the UI's session cookie."""
    return await get_user(request, None, credentials)


@dataclass(frozen=True)
class Reader:
    """Who is asking: an Airflow user, or the scrape token (``user`` None: every target)."""

    user: Any

    def may_read(self, targets: list[str]) -> list[str]:
        """The targets whose every DAG this reader may read (auth manager decides)."""
        if self.user is None:
            return list(targets)
        from airflow.api_fastapi.app import get_auth_manager

        readable = get_auth_manager().get_authorized_dag_ids(user=self.user, method="GET")
        return [t for t in targets if set(dag_ids(t)) <= readable]

    @property
    def name(self) -> str:
        """The user's name as the auth manager has it, for the page header."""
        return "metrics token" if self.user is None else str(self.user.get_name())


async def user_reader(
    request: Request,
    credentials: Credentials,
) -> Reader:
    """A logged-in Airflow user (401 without credentials, 403 with a bad token)."""
    return Reader(await _airflow_user(request, credentials))


def scrape_token() -> str | None:
    """The password of connection ``pg_backup_metrics`` (cached a minute); None if absent."""
    global _token_cache
    fetched, token = _token_cache
    if time.monotonic() - fetched < TOKEN_CACHE_SECONDS and fetched:
        return token
    try:
        from airflow.models.connection import Connection

        token = Connection.get_connection_from_secrets(METRICS_TOKEN_CONN_ID).password or None
    except Exception:  # noqa: BLE001 - no such connection: only Airflow logins are accepted
        token = None
    _token_cache = (time.monotonic(), token)
    return token


async def metrics_reader(
    request: Request,
    credentials: Credentials,
) -> Reader:
    """The scrape token (every target), else a logged-in Airflow user as for the page."""
    token = scrape_token()
    if (
        token
        and credentials is not None
        and hmac.compare_digest(credentials.credentials.encode(), token.encode())
    ):
        return Reader(None)
    return Reader(await _airflow_user(request, credentials))


def require_any(reader: Reader, targets: list[str]) -> list[str]:
    """The readable targets; 403 when the reader may read none of the configured ones."""
    visible = reader.may_read(targets)
    if targets and not visible:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{reader.name} may not read the DAGs of any backup target "
            f"({', '.join(sorted(targets))}); ask an Airflow admin for read access to them",
        )
    return visible
