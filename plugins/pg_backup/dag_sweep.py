"""Wiring of ``pg_retention_sweep_<target>``: inventory, plan, delete, housekeeping, freshness."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from pg_backup.config import TargetConfig
from pg_backup.dag_factory import dag_settings

DOC = """
### Retention sweep of `{target}`

Grandfather-father-son over **verified** sets: the newest verified set of each of the last
{daily} days, {weekly} ISO weeks and {monthly} months; emergency sets for their own keep_days;
failed, unverified and incomplete sets for {grace} days. Rails: never the newest verified set,
never fewer than {min_verified} verified sets, no plan deleting more than {fraction:.0%} of the
sets unless triggered with `force`, no deletes at all if the listing holds no manifest.

Trigger with `dry_run` to see the plan (in the `plan` task's log) without deleting anything.
`check_freshness` fails and mails when the newest verified backup is older than {freshness}.
"""

TASK_DOCS = {
    "inventory": "Lists every set under the target and classifies it (verified, failed, "
    "unverified, incomplete; scheduled or emergency).",
    "plan": "Pure retention plan, logged as a table; refuses (fails) when a rail is hit.",
    "delete": "Deletes planned sets (data first, manifest last); Object-Locked sets are kept "
    "and reported. Does nothing on dry_run.",
    "housekeeping": "Aborts multipart uploads older than a day; removes staging leftovers.",
    "check_freshness": "Fails, and mails once, when the newest verified backup is too old.",
    "report": "Stores the plan and what was done as JSON beside the drill reports.",
}


def _as_of(context: dict[str, Any]) -> datetime:
    """The run's own time: a rerun plans exactly the same."""
    run = context["dag_run"]
    return run.run_after or run.logical_date


def freshness_callback(cfg: TargetConfig) -> Any:
    """After the last retry of check_freshness: the old cron monitor's mail, done right."""

    def notify(context: dict[str, Any]) -> None:
        from pg_backup.notify import run_url, send_mail

        since = str(context.get("exception") or "unknown")
        run = context["dag_run"]
        link = run_url(cfg.alerts.base_url, run.dag_id, run.run_id)
        send_mail(
            cfg,
            f"[pg-backup] no verified backup of {cfg.name} since {since.split(' (')[0]}",
            f"<p>The newest verified backup of <b>{cfg.name}</b>: {since}.</p>"
            f"<p>Look at the recent runs of pg_backup_{cfg.name}; trigger "
            f"pg_backup_emergency_{cfg.name} once the cause is fixed.</p>"
            f'<p>Sweep run: <a href="{link}">{link}</a></p>',
        )

    return notify if cfg.alerts.emails else None


def build_sweep_dag(cfg: TargetConfig) -> DAG:
    """``pg_retention_sweep_<target>``."""
    r = cfg.retention
    with DAG(
        dag_id=f"pg_retention_sweep_{cfg.name}",
        **dag_settings(cfg, "retention", r.schedule),
        params={
            "dry_run": Param(
                False,
                type="boolean",
                title="Dry run",
                description="Plan and report, delete nothing.",
            ),
            "force": Param(
                False,
                type="boolean",
                title="Force",
                description="Allow a plan that deletes more than "
                f"{r.max_delete_fraction:.0%} of the sets.",
            ),
        },
        doc_md=DOC.format(
            target=cfg.name,
            daily=r.daily,
            weekly=r.weekly,
            monthly=r.monthly,
            grace=r.grace_days,
            min_verified=r.min_verified,
            fraction=r.max_delete_fraction,
            freshness=r.freshness,
        ),
    ) as dag:
        timeout = cfg.timeouts.teardown

        @task(execution_timeout=timeout, doc_md=TASK_DOCS["inventory"])
        def inventory() -> dict[str, Any]:
            from pg_backup.storage import open_storage
            from pg_backup.sweep import inventory as take

            found = take(open_storage(cfg.storage), cfg.name)
            return found.to_xcom()

        @task(execution_timeout=timeout, doc_md=TASK_DOCS["plan"])
        def plan(found: dict[str, Any], **context: Any) -> dict[str, Any]:
            import logging

            from pg_backup.retention import format_plan_table, plan_retention, plan_to_json
            from pg_backup.sweep import Inventory, SweepRefused, check_listing, policy_of

            listing = Inventory.from_xcom(found)
            check_listing(listing)
            result = plan_retention(
                [s.to_backup_set() for s in listing.sets],
                policy_of(cfg),
                _as_of(context),
                force=bool(context["params"]["force"]),
            )
            logging.getLogger(__name__).info("retention plan:\n%s", format_plan_table(result))
            if result.refused:
                raise SweepRefused(f"plan refused, nothing deleted: {result.refused}")
            return plan_to_json(result)

        @task(execution_timeout=cfg.timeouts.upload, doc_md=TASK_DOCS["delete"])
        def delete(found: dict[str, Any], planned: dict[str, Any], **context: Any) -> dict:
            from pg_backup.storage import open_storage
            from pg_backup.sweep import Inventory, delete_sets, unfinished_deletes, utcnow

            listing = Inventory.from_xcom(found)
            ids = [s["backup_id"] for s in planned["sets"] if not s["keep"]]
            # Remnants of an interrupted sweep go whatever the grace period says.
            ids += [i for i in unfinished_deletes(listing) if i not in ids]
            return delete_sets(
                open_storage(cfg.storage, for_delete=True),
                listing,
                ids,
                dry_run=bool(context["params"]["dry_run"]),
                now=utcnow(),
            ).to_xcom()

        @task(execution_timeout=timeout, doc_md=TASK_DOCS["housekeeping"])
        def housekeeping(**context: Any) -> dict[str, Any]:
            from pg_backup.storage import open_storage
            from pg_backup.sweep import clean_staging, utcnow

            dry = bool(context["params"]["dry_run"])
            store = open_storage(cfg.storage, for_delete=True)
            now = utcnow()
            aborted = (
                [] if dry else store.abort_stale_uploads(f"{cfg.name}/", now - timedelta(days=1))
            )
            removed = (
                [] if dry else clean_staging(cfg.staging_dir, cfg.name, r.staging_keep_days, now)
            )
            return {"aborted_uploads": aborted, "staging_removed": removed}

        @task(
            execution_timeout=timeout,
            doc_md=TASK_DOCS["check_freshness"],
            on_failure_callback=freshness_callback(cfg),
        )
        def check_freshness(found: dict[str, Any], **context: Any) -> str:
            from pg_backup.sweep import Inventory
            from pg_backup.sweep import check_freshness as check

            return check(Inventory.from_xcom(found), _as_of(context), r.freshness)

        @task(execution_timeout=timeout, doc_md=TASK_DOCS["report"])
        def report(
            planned: dict[str, Any], deleted: dict[str, Any], kept: dict[str, Any], **context: Any
        ) -> str:
            import json

            from pg_backup.storage import open_storage
            from pg_backup.sweep import report_key

            run = context["dag_run"]
            key = report_key(cfg.name, _as_of(context), run.run_id)
            doc = {"run_id": run.run_id, "plan": planned, "delete": deleted, "housekeeping": kept}
            open_storage(cfg.storage).put_bytes(
                key, json.dumps(doc, indent=2, default=str).encode()
            )
            return key

        found = inventory()
        planned = plan(found)
        deleted = delete(found, planned)
        kept = housekeeping()
        check_freshness(found)
        report(planned, deleted, kept)
    return dag
