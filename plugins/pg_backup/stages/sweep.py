"""The retention sweep: plan over the catalog, delete, housekeeping, freshness, report.

The decision is the pure ``core.retention.plan_retention``; this module reads what is there and
carries out a plan. Only sets proven this deployment's are planned (``adapters.catalog``);
foreign sets and objects are reported, never counted, never deleted, and a damaged set is held
for a human. Deletes go set by set from a fresh listing, known object names only, data first
and manifest last, so a sweep that dies half-way leaves sets that the next sweep recognises as
unfinished deletes and completes. A refused delete is reported and the sweep goes on; the report
is stored, then the sweep fails so that someone is told.
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
    SetRecord,
    delete_order,
    inventory,
    newest_verified,
    unfinished_deletes,
)
from pg_backup.adapters.notify import run_url, send_mail
from pg_backup.adapters.run_staging import sweep_runs
from pg_backup.adapters.storage import Storage
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import StaleBackup, StorageError, SweepIncomplete, SweepRefused
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


# After this many sets in a row fail to delete, the store is taken to be unreachable and the
# rest are reported as not tried (each try costs the client's own retries and backoff).
MAX_FAILURES_IN_A_ROW = 3


class DeleteResult(Record):
    """What a delete pass did: deleted, kept under a lock, refused (with why), already gone."""

    deleted_sets: list[str]
    deleted_objects: int
    locked: list[str]
    dry_run: bool
    refused: list[str] = []
    gone: list[str] = []
    held: list[str] = []


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


def take_inventory(rt: Runtime, store: Storage | None = None) -> Inventory:
    """Every set of the target in storage, classified and judged for ownership and damage."""
    return inventory(store or rt.storage, rt.cfg.name, rt.cfg.encryption.own_keys)


def outsiders(found: Inventory) -> dict[str, Any]:
    """What the sweep leaves alone and reports: foreign sets, foreign objects, held sets."""
    return {
        "foreign_sets": [
            {"backup_id": s.backup_id, "why": s.foreign} for s in found.foreign_sets()
        ],
        "foreign_objects": list(found.stray),
        "held": [
            {"backup_id": s.backup_id, "why": "; ".join(s.problems)}
            for s in found.ours()
            if s.problems
        ],
    }


def check_listing(found: Inventory) -> None:
    """Objects but not one manifest: a wrong prefix must not look like an empty one."""
    if found.objects and not any(s.status != "incomplete" for s in found.sets):
        raise SweepRefused(
            f"found {found.objects} object(s) under the target but no complete backup set "
            "(no manifest.json): is storage.url or the target name wrong? Nothing was deleted"
        )


def plan(rt: Runtime, found: Inventory, as_of: datetime, force: bool) -> dict[str, Any]:
    """The retention plan over our sets as JSON, logged as a table, with what is left alone.

    :raises SweepRefused: a rail refused the plan (nothing is deleted)
    """
    check_listing(found)
    result = plan_retention(
        [s.to_backup_set() for s in found.ours()], policy_of(rt.cfg), as_of, force=force
    )
    log.info("retention plan:\n%s", format_plan_table(result))
    left_alone = outsiders(found)
    for item in left_alone["foreign_sets"]:
        log.warning("sweep: foreign set %s left alone: %s", item["backup_id"], item["why"])
    for key in left_alone["foreign_objects"]:
        log.warning("sweep: foreign object %s left alone (pg_backup did not write it)", key)
    for item in left_alone["held"]:
        log.warning("sweep: set %s held for a human: %s", item["backup_id"], item["why"])
    if result.refused:
        raise SweepRefused(f"plan refused, nothing deleted: {result.refused}")
    return {**plan_to_json(result), **left_alone}


def planned_deletes(found: Inventory, planned: dict[str, Any]) -> list[str]:
    """Sets the plan deletes, then remnants of an interrupted sweep (whatever grace says)."""
    ids = [s["backup_id"] for s in planned["sets"] if not s["keep"]]
    return ids + [i for i in unfinished_deletes(found) if i not in ids]


def delete_sets(
    store: Storage, found: Inventory, delete_ids: list[str], dry_run: bool, now: datetime
) -> DeleteResult:
    """Delete the given sets one by one, each from what ``found`` lists now.

    Per set: gone already (nothing to do), no longer ours or now damaged (held), under Object
    Lock (kept), or its known objects deleted data first, manifest last. A refused or failed
    delete is recorded and the next set is tried; after ``MAX_FAILURES_IN_A_ROW`` failures in a
    row the rest are recorded as not tried. Never raises for one set's failure.
    """
    by_id = {s.backup_id: s for s in found.sets}
    out: dict[str, list[str]] = {k: [] for k in ("deleted", "locked", "refused", "gone", "held")}
    objects = failures = 0
    for backup_id in delete_ids:
        record = by_id.get(backup_id)
        if record is None:
            out["gone"].append(backup_id)
            log.info("sweep: %s is gone already", backup_id)
            continue
        if not record.sound:
            why = record.foreign or "; ".join(record.problems)
            out["held"].append(f"{backup_id} ({why})")
            log.warning("sweep: %s not deleted: %s", backup_id, why)
            continue
        if failures >= MAX_FAILURES_IN_A_ROW:
            out["refused"].append(f"{backup_id} (not tried: the store failed {failures} times)")
            continue
        try:
            outcome, count = _delete_one(store, record, dry_run, now)
        except StorageError as exc:
            failures += 1
            out["refused"].append(f"{backup_id} ({exc.summary})")
            log.error("sweep: could not delete %s: %s", backup_id, exc.summary)
            continue
        failures = 0
        objects += count
        if outcome:
            out["locked" if count == 0 else "deleted"].append(outcome)
    return DeleteResult(
        deleted_sets=out["deleted"],
        deleted_objects=objects,
        locked=out["locked"],
        dry_run=dry_run,
        refused=out["refused"],
        gone=out["gone"],
        held=out["held"],
    )


def _delete_one(
    store: Storage, record: SetRecord, dry_run: bool, now: datetime
) -> tuple[str | None, int]:
    """Delete one set's known objects, data first, manifest last.

    :return: (the lock line and 0) when locked, (None, 0) on a dry run, else (id, objects)
    """
    keys = delete_order(record)
    until = max((u for u in (store.locked_until(k) for k in keys) if u is not None), default=None)
    if until is not None and until > now:
        log.info("sweep: %s is under Object Lock until %s: kept", record.backup_id, until)
        return f"{record.backup_id} (Object Lock until {until.isoformat()})", 0
    if dry_run:
        log.info("sweep (dry run): would delete %s (%d objects)", record.backup_id, len(keys))
        return None, 0
    for key in keys:
        store.delete(key)
    log.info("sweep: deleted %s (%d objects)", record.backup_id, len(keys))
    return record.backup_id, len(keys)


def delete(rt: Runtime, planned: dict[str, Any], dry_run: bool) -> DeleteResult:
    """The delete task: from a fresh listing, the plan's sets and unfinished deletes.

    Listed again (not taken from the inventory task) so that a retry, or a sweep after an
    interrupted one, works on what is there now. Uses the sweeper's credentials.
    """
    store = rt.sweep_storage
    found = take_inventory(rt, store)
    return delete_sets(store, found, planned_deletes(found, planned), dry_run, now=utcnow())


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


def housekeeping(rt: Runtime, dry_run: bool, staging: bool = True) -> dict[str, Any]:
    """Abort multipart uploads older than a day; remove stale staging directories.

    :param staging: also tidy the target's staging (the first destination's sweep does, once
        for all: staging belongs to the target, not to a destination)
    """
    if dry_run:
        return {"aborted_uploads": [], "staging_removed": []}
    now = utcnow()
    cfg = rt.cfg
    removed: list[str] = []
    if staging:
        keep = cfg.retention.staging_keep_days
        removed = clean_staging(cfg.staging_dir, cfg.name, keep, now)
        removed += sweep_runs(cfg, now - timedelta(days=keep))
    return {
        "aborted_uploads": rt.sweep_storage.abort_stale_uploads(
            f"{cfg.name}/", now - timedelta(days=1)
        ),
        "staging_removed": removed,
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


def freshness_mail(
    cfg: TargetConfig, since: str, dag_id: str, run_id: str, destination: str | None = None
) -> None:
    """The old cron monitor's mail, done right: no verified backup since ``since``.

    :param destination: the destination judged, for targets with several
    """
    link = run_url(cfg.alerts.base_url, dag_id, run_id)
    where = f" in destination {destination}" if destination else ""
    send_mail(
        cfg,
        f"[pg-backup] no verified backup of {cfg.name}{where} since {since.split(' (')[0]}",
        f"<p>The newest verified backup of <b>{cfg.name}</b>{where}: {since}.</p>"
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
    """Store the sweep's plan and what it did as JSON beside the drill reports; its key.

    :raises SweepIncomplete: after storing, when deletes were refused (so the run fails and
        its failure mail names them)
    """
    key = layout.sweep_report_key(rt.cfg.name, as_of, run_id)
    doc = {"run_id": run_id, "plan": planned, "delete": deleted, "housekeeping": kept}
    rt.storage.put_bytes(key, json.dumps(doc, indent=2, default=str).encode())
    catalog_index.refresh(rt.storage, rt.cfg.name, rt.cfg.encryption.own_keys)
    refused = deleted.get("refused") or []
    if refused:
        raise SweepIncomplete(
            f"{len(refused)} set(s) could not be deleted: {'; '.join(refused)}. Every other set "
            f"was handled; the report is at {rt.storage.describe(key)}. Check the sweeper's "
            "permissions (storage.sweep_aws_conn_id); the next sweep tries again"
        )
    return key
