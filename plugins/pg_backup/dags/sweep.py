"""Wiring of ``pg_retention_sweep_<target>``: inventory, plan, delete, housekeeping, freshness."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from pg_backup.core import params
from pg_backup.core.config import TargetConfig
from pg_backup.core.layout import run_time
from pg_backup.core.names import SweepTask, sweep_dag_id
from pg_backup.dags.common import dag_settings

DOC = """
### Retention sweep of `{target}`

Grandfather-father-son over **verified** sets: the newest verified set of each of the last
{daily} days, {weekly} ISO weeks and {monthly} months; emergency sets for their own keep_days;
failed, unverified and incomplete sets for {grace} days. Rails: never the newest verified set,
never fewer than {min_verified} verified sets, no plan deleting more than {fraction:.0%} of the
sets unless triggered with `force`, no deletes at all if the listing holds no manifest.

Trigger with `dry_run` to see the plan (in the `plan` task's log) without deleting anything.
`check_freshness` fails and mails when the newest verified backup is older than {freshness}.
With several destinations each has its own group of these tasks: its own retention and its
own freshness ("offsite has no verified set younger than 26 h" even when the NAS has one).
"""

TASK_DOCS = {
    SweepTask.INVENTORY: "Lists every set under the target and classifies it (verified, "
    "failed, unverified, incomplete; scheduled or emergency).",
    SweepTask.PLAN: "Pure retention plan, logged as a table; refuses (fails) when a rail is hit.",
    SweepTask.DELETE: "Lists again, then deletes the planned sets one by one (known objects "
    "only, data first, manifest last); Object-Locked, foreign and damaged sets are kept and "
    "reported; a refused delete is reported and the next set is tried. Nothing on dry_run.",
    SweepTask.HOUSEKEEPING: "Aborts multipart uploads older than a day; removes staging leftovers.",
    SweepTask.CHECK_FRESHNESS: "Fails, and mails once, when the newest verified backup is too old.",
    SweepTask.REPORT: "Stores the plan, what was done and what was left alone (foreign sets and "
    "objects, held sets) as JSON beside the drill reports; then fails if a delete was refused.",
}


def freshness_callback(cfg: TargetConfig, destination: str | None = None) -> Any:
    """After the last retry of check_freshness: mail that backups are stale (None: no mail).

    :param destination: the destination judged, for targets with several (named in the mail)
    """

    def notify(context: dict[str, Any]) -> None:
        from pg_backup.stages.sweep import freshness_mail

        run = context["dag_run"]
        since = str(context.get("exception") or "unknown")
        freshness_mail(cfg, since, run.dag_id, run.run_id, destination)

    return notify if cfg.alerts.emails else None


def build_sweep_dag(cfg: TargetConfig) -> DAG:
    """``pg_retention_sweep_<target>``."""
    r = cfg.retention

    multi = cfg.multi_destination
    destinations = [d.name for d in cfg.destinations]

    def runtime(destination: str) -> Any:
        from pg_backup.stages.runtime import Runtime

        return Runtime(cfg).at(destination)

    def rt_retention(destination: str) -> Any:
        return cfg.for_destination(destination).retention

    def step(name: SweepTask, **kwargs: Any) -> Any:
        timeout = cfg.timeouts.upload if name == SweepTask.DELETE else cfg.timeouts.teardown
        return task(task_id=name.value, execution_timeout=timeout, doc_md=TASK_DOCS[name], **kwargs)

    with DAG(
        dag_id=sweep_dag_id(cfg.name),
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

        def sweep(destination: str) -> None:
            """One destination's sweep (the whole DAG when the target has one storage)."""

            @step(SweepTask.INVENTORY)
            def inventory() -> dict[str, Any]:
                from pg_backup.stages.sweep import take_inventory

                return take_inventory(runtime(destination)).to_xcom()

            @step(SweepTask.PLAN)
            def plan(found: dict[str, Any], **context: Any) -> dict[str, Any]:
                from pg_backup.adapters.catalog import Inventory
                from pg_backup.stages.sweep import plan as make_plan

                return make_plan(
                    runtime(destination),
                    Inventory.from_xcom(found),
                    run_time(context),
                    force=params.flag(context["params"], "force"),
                )

            @step(SweepTask.DELETE)
            def delete(planned: dict[str, Any], **context: Any) -> dict[str, Any]:
                from pg_backup.stages.sweep import delete as delete_planned

                return delete_planned(
                    runtime(destination), planned, dry_run=params.flag(context["params"], "dry_run")
                ).to_xcom()

            @step(SweepTask.HOUSEKEEPING)
            def housekeeping(**context: Any) -> dict[str, Any]:
                from pg_backup.stages.sweep import housekeeping as tidy

                dry_run = params.flag(context["params"], "dry_run")
                # Staging is the target's, not a destination's: one group tidies it.
                first = destination == cfg.destinations[0].name
                return tidy(runtime(destination), dry_run=dry_run, staging=first)

            @step(
                SweepTask.CHECK_FRESHNESS,
                on_failure_callback=freshness_callback(cfg, destination if multi else None),
            )
            def check_freshness(found: dict[str, Any], **context: Any) -> str:
                from pg_backup.adapters.catalog import Inventory
                from pg_backup.stages.sweep import check_freshness as check

                return check(
                    Inventory.from_xcom(found),
                    run_time(context),
                    rt_retention(destination).freshness,
                )

            @step(SweepTask.REPORT)
            def report(
                planned: dict[str, Any],
                deleted: dict[str, Any],
                kept: dict[str, Any],
                **context: Any,
            ) -> str:
                from pg_backup.stages.sweep import store_report

                run_id = context["dag_run"].run_id
                return store_report(
                    runtime(destination), run_id, run_time(context), planned, deleted, kept
                )

            found = inventory()
            planned = plan(found)
            deleted = delete(planned)
            kept = housekeeping()
            check_freshness(found)
            report(planned, deleted, kept)

        if not multi:
            sweep(cfg.destinations[0].name)
        for name in destinations if multi else []:
            # Each destination its own inventory, plan (its own policy), deletes and freshness.
            with TaskGroup(group_id=name, tooltip=f"destination {name}"):
                sweep(name)
    return dag
