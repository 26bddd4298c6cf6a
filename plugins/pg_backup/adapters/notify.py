"""Mail: the failure notice sent after a task's last retry (and, opt-in, on each retry)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pg_backup.core.config import TargetConfig
from pg_backup.core.redact import redact

_BODY = """
<p>Backup target <b>{target}</b>: task <b>{{{{ ti.task_id }}}}</b> of DAG
<b>{{{{ dag.dag_id }}}}</b> {what} (try {{{{ ti.try_number }}}}).</p>
<p>Run: {{{{ run_id }}}}<br>Error: <pre>{{{{ exception }}}}</pre></p>
<p>Log: <a href="{{{{ ti.log_url }}}}">{{{{ ti.log_url }}}}</a></p>
<p>{advice}</p>
"""


@cache
def _redacting_notifier() -> Any:
    """The smtp provider's notifier, with the task's exception redacted before rendering.

    Our own errors are redacted when they are made; this covers every other exception a task
    can end with (a library's message may quote a URI or a key).
    """
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    class RedactingSmtpNotifier(SmtpNotifier):  # type: ignore[misc]
        def __call__(self, *args: Any) -> None:
            if len(args) == 1 and args[0].get("exception") is not None:
                context = dict(args[0])
                context["exception"] = redact(str(context["exception"]))
                args = (context,)
            # Rendering writes the templates' results into the notifier: render a copy, or a
            # second task failing in the same process (dag.test) is mailed as the first.
            SmtpNotifier.__call__(copy.copy(self), *args)

    return RedactingSmtpNotifier


def _notifier(cfg: TargetConfig, what: str, subject_word: str, advice: str) -> Any:
    return _redacting_notifier()(
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


def run_url(base_url: str | None, dag_id: str, run_id: str) -> str:
    """Link to a DAG run in the Airflow UI."""
    from urllib.parse import quote

    base = (base_url or _airflow_base_url()).rstrip("/")
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _airflow_base_url() -> str:
    try:
        from airflow.configuration import conf

        return str(conf.get("api", "base_url", fallback="") or "http://localhost:8080")
    except Exception:  # noqa: BLE001 - a link is a convenience, never a reason to lose the mail
        return "http://localhost:8080"


def sla_mail(
    context: dict[str, Any], target: str, sla: str, base_url: str | None
) -> tuple[str, str]:
    """Subject and body of the SLA-miss mail; true whether the run is late or failed early."""
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = run.get("dag_id", "?")
    run_id = run.get("dag_run_id") or run.get("run_id") or "?"
    when = _fmt_time(deadline.get("deadline_time"))
    link = run_url(base_url, dag_id, run_id)
    subject = f"[pg-backup] SLA missed: no verified backup of {target} by {when}"
    body = f"""
<p>No verified backup of <b>{target}</b> was completed within the SLA of {sla}.</p>
<table>
<tr><td>DAG</td><td>{dag_id}</td></tr>
<tr><td>Run</td><td>{run_id}</td></tr>
<tr><td>Queued at</td><td>{_fmt_time(run.get("queued_at"))}</td></tr>
<tr><td>Deadline</td><td>{when}</td></tr>
<tr><td>State when checked</td><td>{run.get("state", "?")}</td></tr>
</table>
<p>Run: <a href="{link}">{link}</a></p>
<p>The run may still be going (a slow source, a lock, a large table) or may have failed before
the deadline; open the run to see which stage it is in. Until a run ends green, the newest
verified backup is older than you expect.</p>
"""
    return subject, body


def _fmt_time(value: Any) -> str:
    from datetime import datetime

    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime(
                "%Y-%m-%d %H:%M:%S UTC"
            )
        except ValueError:
            return value
    return "?"


async def sla_missed(
    context: dict[str, Any],
    target: str,
    emails: list[str],
    smtp_conn_id: str,
    from_email: str | None,
    sla: str,
    base_url: str | None = None,
) -> None:
    """Deadline Alert callback (runs in the triggerer): mail that the SLA was missed."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    subject, body = sla_mail(context, target, sla, base_url)
    async with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
        await hook.asend_email_smtp(
            to=emails, subject=subject, html_content=body, from_email=from_email or hook.from_email
        )


def send_mail(cfg: TargetConfig, subject: str, body: str) -> None:
    """Send one mail synchronously to the target's alert recipients."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    if not cfg.alerts.emails:
        return
    with SmtpHook(smtp_conn_id=cfg.alerts.smtp_conn_id) as hook:
        hook.send_email_smtp(
            to=list(cfg.alerts.emails),
            subject=subject,
            html_content=body,
            from_email=cfg.alerts.from_email or hook.from_email,
        )


def deadline_alerts(cfg: TargetConfig) -> list[Any]:
    """The DAG-level SLA: DAGRUN_QUEUED_AT + sla, mailing the alert recipients."""
    if not cfg.alerts.emails:
        return []
    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    return [
        DeadlineAlert(
            reference=DeadlineReference.DAGRUN_QUEUED_AT,
            interval=cfg.sla,
            callback=AsyncCallback(
                sla_missed,
                kwargs={
                    "target": cfg.name,
                    "emails": list(cfg.alerts.emails),
                    "smtp_conn_id": cfg.alerts.smtp_conn_id,
                    "from_email": cfg.alerts.from_email,
                    "sla": _fmt_duration(cfg.sla.total_seconds()),
                    "base_url": cfg.alerts.base_url,
                },
            ),
            name=f"pg_backup_sla_{cfg.name}",
        )
    ]


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
