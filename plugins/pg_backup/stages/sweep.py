"""The retention sweep: plan over the catalog, delete, housekeeping, freshness, report.

The decision is the pure ``core.retention.plan_retention``; this module reads what is there and
carries out a plan. Deletes go data first, manifest last, so a sweep that dies half-way leaves
sets that the next sweep recognises as unfinished deletes and completes.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pg_backup.adapters import catalog_index
from pg_backup.adapters.catalog import (
    Inventory,
    delete_order,
    inventory,
    newest_verified,
    unfinished_deletes,
)
from pg_backup.adapters.notify import run_url, send_mail
from pg_backup.adapters.storage import Storage
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import StaleBackup, SweepRefused
from pg_backup.core.names import backup_dag_id
from pg_backup.core.records import Record
from pg_backup.core.retention import (
    RetentionPolicy,
    format_plan_table,
    plan_retention,
    plan_to_json,
)
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


class DeleteResult(Record):
    """What a delete pass did."""

    deleted_sets: list[str]
    deleted_objects: int
    locked: list[str]
    dry_run: bool


def utcnow() -> datetime:
    """Wall clock, only for Object Lock dates and staging ages (never for the plan)."""
    return datetime.fromtimestamp(time.time(), UTC)


def policy_of(cfg: TargetConfig) -> RetentionPolicy:
    """The planner's policy from the target's config."""
    r = cfg.retention
    return RetentionPolicy(
        daily=r.daily,
        weekly=r.weekly,
        monthly=r.monthly,
        emergency_keep_days=cfg.emergency.keep_days,
        grace_days=r.grace_days,
        min_verified=r.min_verified,
        max_delete_fraction=r.max_delete_fraction,
        timezone=r.timezone,
    )


def take_inventory(rt: Runtime) -> Inventory:
    """Every set of the target in storage, classified."""
    return inventory(rt.storage, rt.cfg.name)


def check_listing(found: Inventory) -> None:
    """Objects but not one manifest: a wrong prefix must not look like an empty one."""
    if found.objects and not any(s.status != "incomplete" for s in found.sets):
        raise SweepRefused(
            f"found {found.objects} object(s) under the target but no complete backup set "
            "(no manifest.json): is storage.url or the target name wrong? Nothing was deleted"
        )


def plan(rt: Runtime, found: Inventory, as_of: datetime, force: bool) -> dict[str, Any]:
    """The retention plan as JSON, logged as a table; refused plans raise SweepRefused."""
    check_listing(found)
    result = plan_retention(
        [s.to_backup_set() for s in found.sets], policy_of(rt.cfg), as_of, force=force
    )
    log.info("retention plan:\n%s", format_plan_table(result))
    if result.refused:
        raise SweepRefused(f"plan refused, nothing deleted: {result.refused}")
    return plan_to_json(result)


def planned_deletes(found: Inventory, planned: dict[str, Any]) -> list[str]:
    """Sets the plan deletes, then remnants of an interrupted sweep (whatever grace says)."""
    ids = [s["backup_id"] for s in planned["sets"] if not s["keep"]]
    return ids + [i for i in unfinished_deletes(found) if i not in ids]


def delete_sets(
    store: Storage, found: Inventory, delete_ids: list[str], dry_run: bool, now: datetime
) -> DeleteResult:
    """Delete the given sets: data objects first, manifest last; locked sets are skipped."""
    by_id = {s.backup_id: s for s in found.sets}
    deleted: list[str] = []
    locked: list[str] = []
    objects = 0
    for backup_id in delete_ids:
        record = by_id[backup_id]
        until = max(
            (u for u in (store.locked_until(k) for k in record.keys) if u is not None), default=None
        )
        if until is not None and until > now:
            locked.append(f"{record.backup_id} (Object Lock until {until.isoformat()})")
            log.info("sweep: %s is under Object Lock until %s: kept", record.backup_id, until)
            continue
        if dry_run:
            log.info(
                "sweep (dry run): would delete %s (%d objects)", record.backup_id, len(record.keys)
            )
            continue
        for key in delete_order(record):
            store.delete(key)
            objects += 1
        deleted.append(record.backup_id)
        log.info("sweep: deleted %s (%d objects)", record.backup_id, len(record.keys))
    return DeleteResult(
        deleted_sets=deleted, deleted_objects=objects, locked=locked, dry_run=dry_run
    )


def delete(rt: Runtime, found: Inventory, planned: dict[str, Any], dry_run: bool) -> DeleteResult:
    """The delete task: the plan's sets and unfinished deletes, with the sweeper's credentials."""
    return delete_sets(
        rt.sweep_storage, found, planned_deletes(found, planned), dry_run=dry_run, now=utcnow()
    )


def clean_staging(staging_dir: str, target: str, keep_days: int, now: datetime) -> list[str]:
    """Remove run directories in staging untouched for more than ``keep_days``."""
    base = Path(staging_dir) / target
    if not base.is_dir():
        return []
    cutoff = now.timestamp() - keep_days * 86400
    removed = []
    for run_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        newest = max(
            (p.stat().st_mtime for p in run_dir.rglob("*")), default=run_dir.stat().st_mtime
        )
        if newest < cutoff:
            shutil.rmtree(run_dir)
            removed.append(run_dir.name)
    return removed


def housekeeping(rt: Runtime, dry_run: bool) -> dict[str, Any]:
    """Abort multipart uploads older than a day; remove stale staging directories."""
    if dry_run:
        return {"aborted_uploads": [], "staging_removed": []}
    now = utcnow()
    cfg = rt.cfg
    return {
        "aborted_uploads": rt.sweep_storage.abort_stale_uploads(
            f"{cfg.name}/", now - timedelta(days=1)
        ),
        "staging_removed": clean_staging(
            cfg.staging_dir, cfg.name, cfg.retention.staging_keep_days, now
        ),
    }


def check_freshness(found: Inventory, now: datetime, limit: timedelta) -> str:
    """Raise StaleBackup when the newest verified set is older than ``limit``."""
    newest = newest_verified(found)
    if newest is None:
        raise StaleBackup("ever: there is no verified backup in storage")
    taken = datetime.fromisoformat(newest.taken_at)
    age = now - taken
    if age > limit:
        raise StaleBackup(f"{taken:%Y-%m-%d %H:%M UTC} (age {age}, limit {limit})")
    return f"newest verified backup {newest.backup_id} is {age} old (limit {limit})"


def freshness_mail(cfg: TargetConfig, since: str, dag_id: str, run_id: str) -> None:
    """The old cron monitor's mail, done right: no verified backup since ``since``."""
    link = run_url(cfg.alerts.base_url, dag_id, run_id)
    send_mail(
        cfg,
        f"[pg-backup] no verified backup of {cfg.name} since {since.split(' (')[0]}",
        f"<p>The newest verified backup of <b>{cfg.name}</b>: {since}.</p>"
        f"<p>Look at the recent runs of {backup_dag_id(cfg.name)}; trigger "
        f"{backup_dag_id(cfg.name, 'emergency')} once the cause is fixed.</p>"
        f'<p>Sweep run: <a href="{link}">{link}</a></p>',
    )


def store_report(
    rt: Runtime,
    run_id: str,
    as_of: datetime,
    planned: dict[str, Any],
    deleted: dict[str, Any],
    kept: dict[str, Any],
) -> str:
    """Store the sweep's plan and what it did as JSON beside the drill reports; its key."""
    key = layout.sweep_report_key(rt.cfg.name, as_of, run_id)
    doc = {"run_id": run_id, "plan": planned, "delete": deleted, "housekeeping": kept}
    rt.storage.put_bytes(key, json.dumps(doc, indent=2, default=str).encode())
    catalog_index.refresh(rt.storage, rt.cfg.name)
    return key
