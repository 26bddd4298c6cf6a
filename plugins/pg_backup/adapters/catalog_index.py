"""The catalog index in storage (``<target>/catalog.json``): read it, keep it, rebuild it.

Readers (the Backups page, the metrics endpoint) make one GET and never list. Writers are the
tasks that change a set's fate; each change is a pure function of the newest index
(``core.catalog_index``) applied by read, change, conditional put (S3 ``If-Match`` /
``If-None-Match``; an exclusive ``flock`` on ``file://``). When another writer got there first
the put is refused and the change is re-applied to the newer index, so concurrent writers never
lose an entry. A missing, unreadable or stale index is first rebuilt from scratch from the
documents in storage (one listing, in the writing task, never in a page view).

The hooks (``record_*``, ``refresh``) never fail the task that calls them: the set and its
documents are in storage already, the index is derived from them, and the next writer (at the
latest the daily sweep, which always rebuilds) puts it right. They log why instead.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from pg_backup.adapters.catalog import inventory
from pg_backup.adapters.storage import Storage
from pg_backup.core import catalog_index as ci
from pg_backup.core import layout
from pg_backup.core.catalog_index import CatalogIndex
from pg_backup.core.errors import StorageError
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.core.names import drill_dag_id

log = logging.getLogger(__name__)

# Conditional puts tried before giving up (each conflict means another writer succeeded).
ATTEMPTS = 10
# Drill reports read by a rebuild: the newest ones by key (keys start with the date).
DRILL_REPORTS_READ = ci.DRILLS_KEPT
# Sweep reports read by a rebuild (several runs may share a date; the newest plan wins).
SWEEP_REPORTS_READ = 5

Change = Callable[[CatalogIndex], CatalogIndex | None]
_STATS_MODULES = (
    "airflow.sdk.observability.stats",
    "airflow.sdk._shared.observability.metrics.stats",
)


def utcnow() -> datetime:
    """The wall clock: index timestamps only, never a backup's identity."""
    return datetime.fromtimestamp(time.time(), UTC)


def _parse(found: tuple[bytes, str] | None, key: str) -> CatalogIndex | None:
    if found is None:
        return None
    try:
        return CatalogIndex.from_bytes(found[0])
    except ValueError as exc:
        log.warning("catalog index %s is unreadable (%s): it will be rebuilt", key, exc)
        return None


def read_index(store: Storage, target: str) -> CatalogIndex | None:
    """The target's index, or None when missing or unreadable: one GET, never a listing."""
    key = layout.catalog_key(target)
    return _parse(store.get_versioned(key), key)


def _reports(store: Storage, prefix: str, newest: int) -> list[dict[str, Any]]:
    """The newest ``newest`` JSON reports below a prefix (keys begin with their date)."""
    keys = sorted(o.key for o in store.list(prefix) if o.key.endswith(".json"))[-newest:]
    docs = []
    for key in keys:
        try:
            docs.append(json.loads(store.get_bytes(key)))
        except (StorageError, ValueError) as exc:
            log.warning("catalog: report %s skipped: %s", key, exc)
    return docs


def build(
    store: Storage, target: str, now: datetime, keys: Collection[str] | None = None
) -> CatalogIndex:
    """The index from scratch: list the target's sets, read their documents and the reports.

    :param keys: the deployment's public keys (``encryption.own_keys``): sets encrypted to none
        of them are shown as foreign. None: ownership is judged from the manifest alone.
    """
    found = inventory(store, target, keys)
    entries = []
    for record in found.sets:
        location = store.describe(record.prefix)
        manifest = None
        if record.status != "incomplete":
            try:
                manifest = Manifest.from_bytes(
                    store.get_bytes(record.prefix + layout.MANIFEST_OBJECT)
                )
            except (StorageError, ValueError) as exc:
                log.warning("catalog: manifest of %s unreadable: %s", record.backup_id, exc)
        if manifest is None:
            entries.append(ci.incomplete_entry(record.backup_id, location, record.bytes))
            continue
        verification = None
        if record.has(layout.VERIFICATION_OBJECT):
            verification = Verification.from_bytes(
                store.get_bytes(record.prefix + layout.VERIFICATION_OBJECT)
            )
        locked = store.locked_until(record.prefix + layout.DATA_OBJECT)
        entry = ci.entry_from_manifest(manifest, location, verification, locked)
        entries.append(
            entry.model_copy(update={"foreign": record.foreign, "problems": list(record.problems)})
        )
    dag_id = drill_dag_id(target)
    drills = [
        (doc, dag_id)
        for doc in _reports(store, f"{target}/{layout.DRILLS_DIR}/", DRILL_REPORTS_READ)
        if "drilled_at" in doc and "run_id" in doc
    ]
    sweeps = [
        doc
        for doc in _reports(store, f"{target}/{layout.SWEEPS_DIR}/", SWEEP_REPORTS_READ)
        if "plan" in doc and "run_id" in doc
    ]
    sweep = max(sweeps, key=lambda d: d["plan"]["as_of"], default=None)
    return ci.rebuilt(target, entries, drills, sweep, now)


def _emit_metrics(index: CatalogIndex, now: datetime) -> None:
    """The index's metrics as gauges through Airflow's Stats (StatsD or OpenTelemetry).

    Named ``pg_backup.<target>.<metric>[.<status>]`` (plain StatsD has no tags) and tagged
    ``target`` (and ``status``) for OpenTelemetry and tagged StatsD. Outside a task process
    Stats is not initialised and this does nothing.
    """
    # The task runner imports (and initialises) Airflow's stats module before any task code:
    # where it was never imported, nothing is configured to send to, and importing the SDK
    # just to find that out costs seconds (the CLI, tests).
    if not any(name in sys.modules for name in _STATS_MODULES):
        return
    try:
        from airflow.sdk.observability import stats

        for name, labels, value in ci.metric_values(index, now):
            suffix = "".join(f".{v}" for v in labels.values())
            stats.gauge(
                f"pg_backup.{index.target}.{name}{suffix}",
                value,
                tags={"target": index.target, **labels},
            )
    except Exception:  # noqa: BLE001 - metrics never fail the task
        log.warning("catalog: metrics not emitted", exc_info=True)


def update(
    store: Storage,
    target: str,
    change: Change,
    *,
    rebuild: bool = False,
    keys: Collection[str] | None = None,
) -> CatalogIndex:
    """Apply ``change`` to the newest index with a conditional put, retrying on conflicts.

    The index is rebuilt first when missing, unreadable, stale or ``rebuild`` is set, and when
    ``change`` returns None (it needs a set the index does not list yet).

    :param keys: passed to ``build`` (the deployment's public keys, to tell foreign sets)

    :raises StorageError: the store failed, or ``ATTEMPTS`` writers in a row got there first
    """
    key = layout.catalog_key(target)
    for attempt in range(1, ATTEMPTS + 1):
        now = utcnow()
        found = store.get_versioned(key)
        index = _parse(found, key)
        reason = "asked" if rebuild else ci.needs_rebuild(index, target, now)
        if index is None or reason:
            log.info("catalog index of %s: rebuilding from storage (%s)", target, reason)
            index = build(store, target, now, keys)
        changed = change(index)
        if changed is None:
            log.info(
                "catalog index of %s: rebuilding (it lacks the set this change is about)", target
            )
            index = build(store, target, now, keys)
            changed = change(index) or index
        if store.put_if(key, changed.to_bytes(), found[1] if found else None):
            _emit_metrics(changed, now)
            return changed
        log.info(
            "catalog index of %s: a concurrent writer won (try %d); re-applying", target, attempt
        )
        time.sleep(random.uniform(0.02, 0.1) * attempt)
    raise StorageError(
        f"catalog index {store.describe(key)}: {ATTEMPTS} concurrent updates in a row won over "
        "this one; it is rebuilt by the next sweep (or `pg-backup catalog --rebuild`)"
    )


def _best_effort(
    what: str,
    target: str,
    store: Storage,
    change: Change,
    rebuild: bool = False,
    keys: Collection[str] | None = None,
) -> CatalogIndex | None:
    try:
        return update(store, target, change, rebuild=rebuild, keys=keys)
    except Exception as exc:  # noqa: BLE001 - the index is derived data; see the module doc
        log.warning(
            "catalog index of %s not updated after %s (%s); the set itself is safe in storage "
            "and the next sweep rebuilds the index",
            target,
            what,
            exc,
            exc_info=not isinstance(exc, StorageError),
        )
        return None


def record_set(store: Storage, manifest: Manifest, locked_until: datetime | None = None) -> None:
    """Upload hook: the set's manifest is in storage; list the set (unverified so far)."""
    entry = ci.entry_from_manifest(
        manifest,
        store.describe(layout.set_prefix(manifest.target, manifest.backup_id)),
        None,
        locked_until,
    )
    _best_effort("upload", manifest.target, store, lambda i: ci.with_set(i, entry, utcnow()))


def record_verification(store: Storage, target: str, verification: Verification) -> None:
    """Verify hook: ``verification.json`` is in storage; record the proof (or its failure)."""
    _best_effort(
        "verification",
        target,
        store,
        lambda i: ci.with_verification(i, verification, utcnow()),
    )


def record_drill(store: Storage, target: str, report: dict[str, Any]) -> None:
    """Drill hook: the drill report is in storage; record each drilled set's outcome."""
    dag_id = drill_dag_id(target)
    _best_effort(
        "drill report", target, store, lambda i: ci.with_drill(i, report, dag_id, utcnow())
    )


def refresh(store: Storage, target: str, keys: Collection[str] | None = None) -> None:
    """Sweep hook: the sweep report is in storage; rebuild from a fresh listing (daily repair).

    :param keys: the deployment's public keys, so foreign sets are shown as such
    """
    _best_effort("sweep report", target, store, lambda i: i, rebuild=True, keys=keys)


def rebuild(store: Storage, target: str, keys: Collection[str] | None = None) -> CatalogIndex:
    """Rebuild from scratch now (``pg-backup catalog --rebuild``); errors are raised."""
    return update(store, target, lambda i: i, rebuild=True, keys=keys)
