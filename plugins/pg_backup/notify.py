"""Mail: the failure notice sent after a task's last retry (and, opt-in, on each retry)."""

from __future__ import annotations

from typing import Any

from pg_backup.config import TargetConfig

_BODY = """
<p>Backup target <b>{target}</b>: task <b>{{{{ ti.task_id }}}}</b> of DAG
<b>{{{{ dag.dag_id }}}}</b> {what} (try {{{{ ti.try_number }}}}).</p>
<p>Run: {{{{ run_id }}}}<br>Error: <pre>{{{{ exception }}}}</pre></p>
<p>Log: <a href="{{{{ ti.log_url }}}}">{{{{ ti.log_url }}}}</a></p>
<p>{advice}</p>
"""


def _notifier(cfg: TargetConfig, what: str, subject_word: str, advice: str) -> Any:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    return SmtpNotifier(
        to=list(cfg.alerts.emails),
        from_email=cfg.alerts.from_email,
        smtp_conn_id=cfg.alerts.smtp_conn_id,
        subject=(
            f"[pg-backup] {subject_word}: {cfg.name} "
            "{{ dag.dag_id }}.{{ ti.task_id }} ({{ run_id }})"
        ),
        html_content=_BODY.format(target=cfg.name, what=what, advice=advice),
    )


def failure_notifier(cfg: TargetConfig) -> Any | None:
    """Sent once per failed task, after its last retry; None when nobody is to be told."""
    if not cfg.alerts.emails:
        return None
    return _notifier(
        cfg,
        "failed after its last retry",
        "FAILED",
        "No new backup set was completed by this run. Read the log, fix the cause, then clear "
        "the failed task (its upstream stages are kept) or trigger the emergency DAG.",
    )


def retry_notifier(cfg: TargetConfig) -> Any | None:
    """Sent on each retry, only when alerts.on_retry is true."""
    if not cfg.alerts.emails or not cfg.alerts.on_retry:
        return None
    return _notifier(cfg, "failed and will be retried", "retrying", "No action needed yet.")
