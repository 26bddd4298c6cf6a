"""``[core] hostname_callable`` for the Celery e2e: two workers on one machine, two names.

Airflow records this name on every task instance it runs, and pg_backup records it on every
staged file, so the test can tell which worker ran (and wrote) what.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``$PGB_E2E_HOSTNAME``, else the machine's FQDN."""
    return os.environ.get("PGB_E2E_HOSTNAME") or socket.getfqdn()
