"""What every DAG of a target shares.

UTC cron, no backfill, one run at a time, tags, retries, failure mail. Imported by each DAG
builder; imports none of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Asset
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from pg_backup.adapters.notify import failure_notifier, retry_notifier
from pg_backup.core.config import TargetConfig

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)


class BackupDAG(DAG):
    """A DAG whose in-process test runs without its Deadline Alerts.

    Airflow 3.3's ``dag.test()`` (and so ``airflow dags test``) crashes at the end of a
    successful run of a DAG with deadlines (``'dict' object has no attribute 'hex'`` while
    pruning them) and leaves the run "running". Deadlines only fire under a scheduler and a
    triggerer anyway, so a test run drops them; scheduled and triggered runs keep them.
    """

    def test(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``DAG.test`` with the deadlines detached, then put them back."""
        saved = self.deadline
        self.deadline = None
        try:
            return super().test(*args, **kwargs)
        finally:
            self.deadline = saved


def backup_asset(target: str) -> Asset:
    """One asset per target: its events are the backup history."""
    # An "x-" scheme skips Airflow's URI normalizers: looking one up loads every provider's
    # asset handlers, and the amazon provider's imports boto3 (about 1 s per parse).
    return Asset(name=f"pg_backup_{target}", uri=f"x-pgbackup://{target}", group="pg_backup")


def default_args(cfg: TargetConfig) -> dict[str, Any]:
    """Owner, retries with exponential backoff, and the failure (and opt-in retry) mail."""
    args: dict[str, Any] = {
        "owner": cfg.owner,
        "retries": cfg.retries,
        "retry_delay": cfg.retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": cfg.max_retry_delay,
    }
    on_failure = failure_notifier(cfg)
    if on_failure is not None:
        args["on_failure_callback"] = on_failure
    on_retry = retry_notifier(cfg)
    if on_retry is not None:
        args["on_retry_callback"] = on_retry
    return args


def dag_settings(cfg: TargetConfig, tag: str, cron: str | None) -> dict[str, Any]:
    """Keyword arguments of every DAG of a target (``tag`` names the DAG's role)."""
    return {
        # The config's cron is UTC whatever Airflow's default_timezone says.
        "schedule": CronTriggerTimetable(cron, timezone="UTC") if cron else None,
        # A fixed past start with catchup off: the first run is the latest interval, no backfill.
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["pg_backup", cfg.name, tag, *cfg.tags],
        "default_args": default_args(cfg),
    }
