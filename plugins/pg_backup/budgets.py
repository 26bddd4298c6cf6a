"""Stage time budgets: a listener mails once when a stage ends (success or final failure) late.

It also sends each finished stage's duration to Airflow's metrics (``emit_duration``).

The budget is a warning, not a limit: ``execution_timeout`` (the larger ``timeouts.*``) is what
stops a hung stage. Registered by ``plugins/pg_backup_plugin.py``; runs in the task process.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from airflow.listeners import hookimpl

from pg_backup.adapters.notify import run_url, send_mail
from pg_backup.core.config import Config, TargetConfig, load_config
from pg_backup.core.names import backup_dag_targets, stage_of_task

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _config() -> Config:
    return load_config()


def target_of(dag_id: str, config: Config) -> TargetConfig | None:
    """The target whose backup DAG this is (None for any other DAG)."""
    name = backup_dag_targets(config.targets).get(dag_id)
    return config.targets[name] if name else None


def over_budget(
    cfg: TargetConfig, task_id: str, started: datetime | None, ended: datetime
) -> tuple[str, timedelta, timedelta] | None:
    """(stage, took, budget) when the task is a budgeted stage that took longer than its budget."""
    stage = stage_of_task(task_id)
    if stage is None or started is None:
        return None
    took = ended - started
    budget = cfg.budgets.of(stage)
    return (stage.value, took, budget) if took > budget else None


def budget_mail(
    cfg: TargetConfig,
    dag_id: str,
    run_id: str,
    task_id: str,
    outcome: str,
    took: timedelta,
    budget: timedelta,
) -> tuple[str, str]:
    """Subject and body of the over-budget mail."""
    minutes = took.total_seconds() / 60
    subject = (
        f"[pg-backup] over budget: {cfg.name} {task_id} took {minutes:.1f} min "
        f"(budget {budget.total_seconds() / 60:.1f} min)"
    )
    link = run_url(cfg.alerts.base_url, dag_id, run_id)
    body = (
        f"<p>Stage <b>{task_id}</b> of <b>{dag_id}</b> ended ({outcome}) after "
        f"{took.total_seconds():.0f} s; its budget is {budget.total_seconds():.0f} s.</p>"
        f'<p>Run: <a href="{link}">{link}</a></p>'
        "<p>Nothing was stopped: the budget only warns. A stage that keeps growing will hit its "
        "timeout; look at the stage's log for its throughput, and at the source (locks, size).</p>"
    )
    return subject, body


def _check(task_instance: Any, outcome: str) -> None:
    cfg = target_of(task_instance.dag_id, _config())
    if cfg is None or not cfg.alerts.emails:
        return
    late = over_budget(cfg, task_instance.task_id, task_instance.start_date, datetime.now(UTC))
    if late is None:
        return
    _, took, budget = late
    subject, body = budget_mail(
        cfg,
        task_instance.dag_id,
        task_instance.run_id,
        task_instance.task_id,
        outcome,
        took,
        budget,
    )
    log.warning("%s", subject)
    send_mail(cfg, subject, body)


def _is_final_failure(task_instance: Any) -> bool:
    state = str(getattr(task_instance, "state", "") or "")
    return "up_for_retry" not in state


def emit_duration(task_instance: Any, ended: datetime) -> None:
    """A backup stage ended well: its duration as a timer through Airflow's Stats.

    ``pg_backup.<target>.stage.<stage>`` tagged ``target`` and ``stage`` (StatsD or
    OpenTelemetry, whichever the deployment configured; nothing when neither is).
    """
    cfg = target_of(task_instance.dag_id, _config())
    if cfg is None or stage_of_task(task_instance.task_id) is None:
        return
    if task_instance.start_date is None:
        return
    from airflow.sdk.observability import stats

    stats.timing(
        f"pg_backup.{cfg.name}.stage.{task_instance.task_id}",
        ended - task_instance.start_date,
        tags={"target": cfg.name, "stage": task_instance.task_id},
    )


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    """A stage succeeded: its duration metric, and a mail if it took longer than its budget."""
    try:
        emit_duration(task_instance, datetime.now(UTC))
        _check(task_instance, "success")
    except Exception:  # a listener must never fail the task it watches
        log.exception("pg_backup budget listener failed")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    """A stage failed for good (not a retry): mail if it took longer than its budget."""
    try:
        if _is_final_failure(task_instance):
            _check(task_instance, "failed")
    except Exception:
        log.exception("pg_backup budget listener failed")
