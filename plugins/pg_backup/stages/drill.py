"""The restore drill: sets fetched back from storage, restored and proven, then one report.

Each step handles every chosen backup in turn (the newest verified one and a random older one),
so a drill is one run, one report and one mail. The steps themselves are the restore-from-storage
flow of ``stages.retrieve``. Nothing here touches the source database.

A report always exists, and says why a drill failed in one line: ``choose`` hands on what it
could not choose (and why) instead of failing, and a step that fails for a set writes the
cause into that set's download directory (``<task>.error``) before the task fails; the report
reads it from there.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from pg_backup.adapters import catalog_index, staging
from pg_backup.adapters.catalog import complete_sets, inventory
from pg_backup.adapters.notify import run_url, send_mail
from pg_backup.core import layout, params
from pg_backup.core.drill_report import (
    build_report,
    choose_backups,
    collect,
    format_report_table,
    report_mail,
    stored_report,
)
from pg_backup.core.errors import DrillError, PgBackupError, StorageError
from pg_backup.core.manifest import Manifest
from pg_backup.core.names import DrillTask
from pg_backup.core.records import Record, records_to_xcom
from pg_backup.core.redact import first_line
from pg_backup.stages import retrieve
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def workdir(rt: Runtime, run_id: str, backup: str | None = None) -> Path:
    """The drill run's download directory, or one backup's subdirectory of it."""
    return layout.drill_workdir(rt.cfg.staging_dir, rt.cfg.name, run_id, backup)


def _manifests(chosen: dict[str, Any]) -> dict[str, Manifest]:
    return {b: Manifest.model_validate(m) for b, m in chosen["manifests"].items()}


def drill_destination(rt: Runtime, at: datetime | None, asked: str | None) -> str | None:
    """The destination this drill restores from: the one asked, else the next in turn.

    In turn means by week: the drill of ISO week ``n`` (counted from year 1) uses destination
    ``n mod count``, so a weekly drill visits each destination in order. None for a target
    with one storage.

    :raises ConfigError: ``asked`` names no destination of the target
    """
    if not rt.cfg.multi_destination:
        return None
    if asked:
        return rt.cfg.destination(asked).name
    names = [d.name for d in rt.cfg.destinations]
    week = (at.date().toordinal() // 7) if at is not None else 0
    return names[week % len(names)]


def source_of(rt: Runtime, chosen: dict[str, Any] | None) -> Runtime:
    """The runtime of the destination the drill restores from (``rt`` with one storage)."""
    name = (chosen or {}).get("destination")
    return rt.at(name) if name else rt


def choose(
    rt: Runtime,
    run_id: str,
    seed: int | None,
    backup_id: str | None,
    at: datetime | None = None,
    destination: str | None = None,
) -> dict[str, Any]:
    """Pick the sets to drill; the seed defaults to one derived from the run id (recorded).

    Never fails for want of a set: what could not be chosen, and why, goes into ``error`` so
    that the report still exists and says so. With several destinations, the sets are chosen
    in the destination the drill restores from (``drill_destination``), named in ``destination``.

    :param at: the drill run's time (picks the destination in turn)
    :param destination: the destination asked for in the trigger form (None: in turn)
    """
    picked = seed if seed is not None else zlib.crc32(run_id.encode())
    named: dict[str, Any] = {}
    try:
        name = drill_destination(rt, at, destination)
        if name is not None:
            named = {"destination": name}
            if rt.cfg.drill.destinations == "all":
                named["checked_in"] = [d.name for d in rt.cfg.destinations if d.name != name]
            log.info("drill: restoring from destination %s", name)
        src = rt.at(name) if name else rt
        seed, backup_id = params.drill_choice({"seed": seed, "backup_id": backup_id})
        picked = seed if seed is not None else picked
        found = inventory(src.storage, rt.cfg.name, rt.cfg.encryption.own_keys)
        picks = choose_backups(complete_sets(found), picked, backup_id or None)
        manifests = {
            b: retrieve.load_manifest(src.storage, rt.cfg.name, b).model_dump(mode="json")
            for b in picks
        }
    except (PgBackupError, OSError) as exc:
        cause = exc.summary if isinstance(exc, PgBackupError) else f"{type(exc).__name__}: {exc}"
        if named:
            cause = f"destination {named['destination']}: {cause}"
        log.error("drill: nothing to drill: %s", cause)
        return {
            "seed": picked,
            "backups": [],
            "manifests": {},
            "error": first_line(cause),
            **named,
        }
    return {"seed": picked, "backups": picks, "manifests": manifests, **named}


def _cause_file(rt: Runtime, run_id: str, backup: str, task: DrillTask) -> Path:
    return workdir(rt, run_id, backup) / f"{task.value}.error"


@contextmanager
def recording(rt: Runtime, run_id: str, backup: str, task: DrillTask) -> Iterator[None]:
    """Write why ``task`` failed for ``backup`` (one line) where the report will read it."""
    path = _cause_file(rt, run_id, backup, task)
    path.unlink(missing_ok=True)  # a retry that succeeds leaves no stale cause behind
    try:
        yield
    except BaseException as exc:
        cause = exc.summary if isinstance(exc, PgBackupError) else f"{type(exc).__name__}: {exc}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(first_line(cause, 1000) + "\n")
        except OSError:
            log.warning("drill: cannot record the cause at %s", path)
        raise


def recorded_causes(rt: Runtime, run_id: str, chosen: dict[str, Any] | None) -> dict[str, Any]:
    """Backup id -> {task id: cause} from the ``<task>.error`` files of this drill run."""
    out: dict[str, dict[str, str]] = {}
    for backup in (chosen or {}).get("backups", []):
        for task in DrillTask:
            path = _cause_file(rt, run_id, backup, task)
            if path.is_file():
                out.setdefault(backup, {})[task.value] = path.read_text().strip()
    return out


def _each(
    rt: Runtime,
    run_id: str,
    task: DrillTask,
    chosen: dict[str, Any],
    step: Callable[[str, Manifest], Record],
) -> dict[str, Any]:
    """Run one step for every chosen set: ``{backup_id: record}`` as an XCom."""
    out = {}
    for backup, manifest in _manifests(chosen).items():
        with recording(rt, run_id, backup, task):
            out[backup] = step(backup, manifest)
    return records_to_xcom(out)


def fetch_chosen(rt: Runtime, chosen: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Download each chosen set, checked against its manifest.

    With several destinations: from the one the drill restores from, and (``drill.destinations:
    all``) every other copy too, each checked against its own manifest and against the copy
    restored; a failure names the destination.
    """
    src = source_of(rt, chosen)

    def one(backup: str, manifest: Manifest) -> Record:
        fetched = _from(chosen.get("destination"), lambda: _fetch(src, manifest, run_id, backup))
        for other in chosen.get("checked_in", []):
            _from(other, partial(_check_copy, rt.at(other), manifest, run_id, backup))
        return fetched

    return _each(rt, run_id, DrillTask.FETCH, chosen, one)


def _fetch(src: Runtime, manifest: Manifest, run_id: str, backup: str) -> retrieve.Fetched:
    return retrieve.fetch(src.storage, manifest, workdir(src, run_id, backup))


def _from(destination: str | None, action: Callable[[], Any]) -> Any:
    """Run ``action``; a failure names the destination it was for."""
    try:
        return action()
    except PgBackupError as exc:
        if destination is None:
            raise
        raise DrillError(f"destination {destination}: {exc.summary}") from None


def _check_copy(dest: Runtime, restored: Manifest, run_id: str, backup: str) -> None:
    """Another destination's copy: its manifest names the same bytes, and its objects match."""
    manifest = retrieve.load_manifest(dest.storage, dest.cfg.name, backup)
    if (manifest.data, manifest.tables) != (restored.data, restored.tables):
        raise DrillError(
            f"the copy of {backup} there is not the set restored: its manifest names other "
            "objects (sizes or hashes differ)"
        )
    path = workdir(dest, run_id, backup) / "copies"
    try:
        retrieve.fetch(dest.storage, manifest, path)
    finally:
        staging.remove_dir(path)


def decrypt_chosen(
    rt: Runtime, chosen: dict[str, Any], fetched: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """Decrypt each chosen set with the identity connection's private key(s)."""
    return _each(
        rt,
        run_id,
        DrillTask.DECRYPT,
        chosen,
        lambda b, m: retrieve.decrypt(
            workdir(rt, run_id, b), retrieve.Fetched.from_xcom(fetched[b]), rt.identities, m
        ),
    )


def decompress_chosen(
    rt: Runtime, chosen: dict[str, Any], decrypted: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """Decompress each chosen set and prove it is the dump that was staged."""
    return _each(
        rt,
        run_id,
        DrillTask.DECOMPRESS,
        chosen,
        lambda b, m: retrieve.decompress(
            workdir(rt, run_id, b), retrieve.Decrypted.from_xcom(decrypted[b]), m
        ),
    )


def create_drill_dbs(rt: Runtime, chosen: dict[str, Any], run_id: str) -> list[str]:
    """Set-up task: an empty ``pgb_drill_<backup id>`` per chosen set, in its source's locale.

    On the standby server when ``drill.standby_conn_id`` is set, else on the scratch server.
    """
    names = []
    for backup, manifest in _manifests(chosen).items():
        with recording(rt, run_id, backup, DrillTask.CREATE_DRILL_DBS):
            name = layout.drill_db_name(backup)
            rt.drill_databases.guard(name, manifest.source)
            rt.drill_databases.create(name, retrieve.database_locale(manifest))
            names.append(name)
    return names


def restore_chosen(
    rt: Runtime,
    chosen: dict[str, Any],
    opened: dict[str, Any],
    decrypted: dict[str, Any],
    run_id: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """pg_restore -j each chosen set into its drill database (a retry starts from empty).

    On a standby server, as a worst-day restore would: the roles it lacks are created first,
    owners and grants restored; then the source's database settings (and owner and grants).
    """
    standby = rt.cfg.drill.standby_conn_id is not None
    out = {}
    for backup, manifest in _manifests(chosen).items():
        name, work = layout.drill_db_name(backup), workdir(rt, run_id, backup)
        with recording(rt, run_id, backup, DrillTask.RESTORE):
            target = rt.drill_databases.endpoint(name, manifest.source)
            if attempt > 1:
                rt.drill_databases.create(name, retrieve.database_locale(manifest))
            doc = retrieve.database_globals(
                work, retrieve.Decrypted.from_xcom(decrypted[backup]), manifest
            )
            owners = standby and doc is not None
            made = retrieve.make_roles(rt.drill_server, doc) if owners and doc else None
            out[backup] = retrieve.restore(
                target,
                work,
                retrieve.Opened.from_xcom(opened[backup]),
                rt.cfg,
                rt.cfg.restore.jobs,
                owners=owners,
            )
            if doc is not None:
                done = rt.drill_databases.configure(
                    name, doc, owners, made.created if made else None
                )
                for failed in done.failed:
                    log.warning("drill: %s: not applied: %s", backup, failed)
    return records_to_xcom(out)


def verify_chosen(
    rt: Runtime, chosen: dict[str, Any], decrypted: dict[str, Any], run_id: str
) -> dict[str, Any]:
    """Rows, content and objects, the configured invariant checks, and the database as it was.

    As it was: locale and settings; on a standby also roles, owners and grants, read from the
    restored catalogs and compared with those captured at dump time.
    """
    out = {}
    for backup, manifest in _manifests(chosen).items():
        with recording(rt, run_id, backup, DrillTask.VERIFY):
            work = workdir(rt, run_id, backup)
            clear = retrieve.Decrypted.from_xcom(decrypted[backup])
            target = rt.drill_databases.endpoint(layout.drill_db_name(backup), manifest.source)
            doc = retrieve.table_document(work, clear)
            proven = retrieve.prove(target, doc, rt.cfg, list(rt.cfg.drill.checks))
            globals_doc = retrieve.database_globals(work, clear, manifest)
            if globals_doc is not None:
                owners = rt.cfg.drill.standby_conn_id is not None
                check = retrieve.as_it_was_check(
                    retrieve.as_it_was(target, globals_doc, rt.cfg), owners
                )
                proven = proven.model_copy(update={"checks": [*proven.checks, asdict(check)]})
            out[backup] = proven
    return records_to_xcom(out)


def report(
    rt: Runtime,
    run_id: str,
    dag_id: str,
    at: datetime,
    chosen: dict[str, Any] | None,
    phases: dict[DrillTask, dict[str, Any] | None],
) -> dict[str, Any]:
    """Build, store (once per run) and mail the drill report; fail if the drill failed.

    The report says why in one line per set (the cause a failed step recorded), or why nothing
    was drilled. It is mailed even when it cannot be stored (storage down), and says so.

    :param phases: each drill phase's XCom (None where the phase did not complete)
    :raises DrillError: the drill did not pass (the report is stored and mailed first)
    """
    cfg = rt.cfg
    rto = cfg.drill.rto.total_seconds()
    if chosen is None:
        why: str | None = "choose did not complete and recorded no cause: see its log"
    else:
        why = chosen.get("error")
    doc = build_report(
        cfg.name,
        run_id,
        at,
        chosen["seed"] if chosen else None,
        rto,
        collect(chosen, phases, at, recorded_causes(rt, run_id, chosen)),
        why,
    )
    if chosen and chosen.get("destination"):
        doc["destination"] = chosen["destination"]
        doc["checked_in"] = chosen.get("checked_in", [])
        log.info("drill: restored from destination %s", doc["destination"])
    log.info("drill report:\n%s", format_report_table(doc["backups"], rto))
    store = source_of(rt, chosen).storage
    key = layout.drill_report_key(cfg.name, at, run_id)
    where = store.describe(key)
    try:
        first = not store.exists(key)  # a retried report task must not mail twice
        store.put_bytes(key, json.dumps(stored_report(doc), indent=2).encode())
    except StorageError as exc:
        first, where = True, f"nowhere: storing it failed ({exc.summary})"
        doc["stored"] = where
        log.error("drill: the report could not be stored: %s", exc.summary)
    else:
        catalog_index.record_drill(store, cfg.name, stored_report(doc))
    if first:
        send_mail(cfg, *report_mail(doc, run_url(cfg.alerts.base_url, dag_id, run_id)))
    if doc["outcome"] != "passed":
        causes = [doc["error"]] if doc["error"] else []
        causes += [f"{b['backup_id']}: {b['error']}" for b in doc["backups"] if b["error"]]
        summary = f": {causes[0]}" if causes else ""
        source = f" from destination {doc['destination']}" if doc.get("destination") else ""
        raise DrillError(f"restore drill{source} failed{summary}; report at {where}")
    return {"key": key, "outcome": doc["outcome"]}


def drop_drill_dbs(rt: Runtime, chosen: dict[str, Any] | None) -> list[str]:
    """Tear-down task: drop the drill databases, whatever happened."""
    names = [layout.drill_db_name(b) for b in (chosen or {}).get("backups", [])]
    return [name for name in names if rt.drill_databases.drop(name)]


def cleanup(rt: Runtime, run_id: str) -> str:
    """Tear-down task: remove the drill's downloads."""
    path = workdir(rt, run_id)
    staging.remove_dir(path)
    return f"removed {path}"
