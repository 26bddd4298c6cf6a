"""Restore drills and break-glass restores: a backup fetched back from storage, proven usable.

Shared by the weekly drill DAG and the ``pg-backup`` command line: fetch (hash checked against
the manifest in the same pass), decrypt with the private key, decompress, restore, count, run
the invariant checks. Nothing here ever connects to the source database.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pg_backup import layout
from pg_backup.config import CheckConfig
from pg_backup.dump import TableCount, counts_from_json
from pg_backup.manifest import Manifest, ObjectEntry
from pg_backup.pgconn import PgEndpoint
from pg_backup.staging import StagedFile
from pg_backup.storage import Storage, StorageError

log = logging.getLogger(__name__)


class DrillError(RuntimeError):
    """A drill or restore step failed; the message says which object or check and why."""


@dataclass(frozen=True)
class CheckResult:
    """One invariant check against the restored database."""

    name: str
    ok: bool
    detail: str


def load_manifest(store: Storage, target: str, backup_id: str) -> Manifest:
    """The manifest of one set, or an error saying the set is not complete."""
    layout.parse_backup_id(backup_id)
    key = layout.set_prefix(target, backup_id) + layout.MANIFEST_OBJECT
    try:
        return Manifest.from_bytes(store.get_bytes(key))
    except StorageError:
        raise DrillError(
            f"backup {backup_id} has no manifest at {store.describe(key)}: it does not exist or "
            "is incomplete (see `pg-backup list`)"
        ) from None


def choose_backups(
    candidates: list[dict[str, Any]], seed: int, backup_id: str | None = None
) -> list[str]:
    """The newest verified set plus one older complete set picked with a recorded seed."""
    if backup_id:
        if not any(c["backup_id"] == backup_id for c in candidates):
            raise DrillError(f"backup {backup_id} is not a complete set in storage")
        return [backup_id]
    ordered = sorted(candidates, key=lambda c: (c["taken_at"], c["backup_id"]), reverse=True)
    verified = [c for c in ordered if c["status"] == "verified"]
    if not verified:
        raise DrillError("no verified backup in storage: nothing to drill")
    newest = verified[0]
    older = [c for c in ordered if c["taken_at"] < newest["taken_at"]]
    picks = [newest["backup_id"]]
    if older:
        picks.append(random.Random(seed).choice(older)["backup_id"])
    return picks


def _fetch_one(store: Storage, entry: ObjectEntry, dest: Path) -> StagedFile:
    got = store.download(entry.key, dest)
    if got.sha256 != entry.sha256 or got.bytes != entry.bytes:
        dest.unlink(missing_ok=True)
        raise DrillError(
            f"{store.describe(entry.key)} does not match its manifest: manifest says "
            f"{entry.bytes} bytes sha256 {entry.sha256}, storage gave {got.bytes} bytes sha256 "
            f"{got.sha256}. The stored object is corrupt or was replaced: do not rely on it"
        )
    return got


def fetch_set(store: Storage, manifest: Manifest, dest: Path) -> dict[str, Any]:
    """Download the data object and the table list, each checked against the manifest."""
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    data = _fetch_one(store, manifest.data, dest / layout.DATA_OBJECT)
    tables = _fetch_one(store, manifest.tables, dest / layout.TABLES_OBJECT)
    return {
        "data": data.to_xcom(),
        "tables": tables.to_xcom(),
        "seconds": round(time.monotonic() - started, 3),
    }


def split_identities(secret: str) -> list[str]:
    """Every ``AGE-SECRET-KEY-1...`` line of a connection password or key file."""
    return [
        line.strip() for line in secret.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")
    ]


def identities_from_connection(conn_id: str) -> list[str]:
    """Private keys from an Airflow connection's password field (one or more, for rotation)."""
    from pg_backup.pgconn import get_connection

    keys = split_identities(get_connection(conn_id).password or "")
    if not keys:
        raise DrillError(
            f"connection {conn_id!r} holds no age private key: put AGE-SECRET-KEY-1... (one per "
            "line when rotating keys) in its password field"
        )
    return keys


def _public_keys(identities: list[str]) -> list[str]:
    from pg_backup.encrypt import parse_identity

    return [
        str(parse_identity(key, f"identity[{i}]").to_public()) for i, key in enumerate(identities)
    ]


def decrypt_set(
    dest: Path, fetched: dict[str, Any], identities: list[str], manifest: Manifest
) -> dict[str, Any]:
    """Decrypt data and table list; a wrong key says which recipients the backup was made for."""
    import pyrage

    from pg_backup.encrypt import decrypt_file

    started = time.monotonic()
    out: dict[str, Any] = {}
    for name, plain in (("data", layout.COMPRESSED_FILE), ("tables", layout.TABLES_FILE)):
        staged = StagedFile.from_xcom(fetched[name])
        try:
            out[name] = decrypt_file(dest / staged.name, staged, dest / plain, identities).to_xcom()
        except pyrage.DecryptError:
            raise DrillError(
                f"none of the {len(identities)} private key(s) given decrypts backup "
                f"{manifest.backup_id}: it was encrypted to {', '.join(manifest.recipients)}; the "
                f"keys given belong to {', '.join(_public_keys(identities))}. Use the private key "
                "of one of those recipients"
            ) from None
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def decompress_set(dest: Path, decrypted: dict[str, Any]) -> dict[str, Any]:
    """Decompress into the dump pg_restore -j needs (a seekable file).

    A custom-format file, or for sets made with ``dump.jobs`` > 1 (manifest ``dump_format:
    directory``) a tar of a directory-format dump that ``restore_dump`` unpacks first.
    """
    from pg_backup.compress import decompress_file

    started = time.monotonic()
    staged = StagedFile.from_xcom(decrypted["data"])
    dump = decompress_file(dest / staged.name, staged, dest / layout.DUMP_FILE)
    (dest / staged.name).unlink(missing_ok=True)  # free the space before the restore
    return {"dump": dump.to_xcom(), "seconds": round(time.monotonic() - started, 3)}


def expected_counts(dest: Path, decrypted: dict[str, Any]) -> list[TableCount]:
    """The snapshot counts from the decrypted table list."""
    from pg_backup import staging

    staged = StagedFile.from_xcom(decrypted["tables"])
    return counts_from_json(json.loads(staging.read_small(dest / staged.name, staged)))


def run_checks(target: PgEndpoint, checks: list[CheckConfig]) -> list[CheckResult]:
    """Each check's SQL must return a single true, or no rows at all."""
    results: list[CheckResult] = []
    with target.connect(autocommit=True) as conn:
        for check in checks:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(check.sql)
                    rows = cur.fetchmany(6) if cur.description else []
            except Exception as exc:  # noqa: BLE001 - a broken check is a failed check
                results.append(CheckResult(check.name, False, f"error: {str(exc).strip()[:300]}"))
                continue
            if len(rows) == 1 and len(rows[0]) == 1 and isinstance(rows[0][0], bool):
                ok = rows[0][0]
                detail = "returned true" if ok else "returned false"
            else:
                ok = not rows
                detail = (
                    "no rows"
                    if ok
                    else f"{len(rows)}{'+' if len(rows) > 5 else ''} row(s), e.g. {rows[0]!r}"
                )
            results.append(CheckResult(check.name, bool(ok), detail))
    return results


@dataclass
class DrilledBackup:
    """One backup's drill outcome, as stored in the report."""

    backup_id: str
    kind: str
    taken_at: str
    stored_bytes: int
    age_hours: float
    phases: dict[str, float] = field(default_factory=dict)
    relations: int = 0
    rows: int = 0
    counts_ok: bool = False
    differences: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def rto_seconds(self) -> float:
        """Fetch to verified: the recovery time this drill measured."""
        return round(sum(self.phases.values()), 3)

    @property
    def ok(self) -> bool:
        """Counts exact, every check passed, no error."""
        return self.error is None and self.counts_ok and all(c["ok"] for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with the derived fields."""
        return {**asdict(self), "rto_seconds": self.rto_seconds, "ok": self.ok}


def age_hours(taken_at: str, at: datetime) -> float:
    """How old a backup is at drill time: the recovery point actually achieved."""
    return round((at - datetime.fromisoformat(taken_at)).total_seconds() / 3600, 2)


def format_report_table(backups: list[dict[str, Any]], rto: float) -> str:
    """A short fixed-width table for the log and the mail."""
    lines = [f"{'backup':<44} {'age h':>7} {'RTO s':>8} {'counts':>7} {'checks':>7}  result"]
    for b in backups:
        checks = f"{sum(c['ok'] for c in b['checks'])}/{len(b['checks'])}"
        result = (
            "ok"
            if b["ok"] and b["rto_seconds"] <= rto
            else ("over RTO" if b["ok"] else (b["error"] or "failed").splitlines()[0][:60])
        )
        lines.append(
            f"{b['backup_id']:<44} {b['age_hours']:>7.1f} {b['rto_seconds']:>8.1f} "
            f"{'exact' if b['counts_ok'] else 'DIFF':>7} {checks:>7}  {result}"
        )
    return "\n".join(lines)


_PHASES = ("fetch", "decrypt", "decompress", "restore", "verify")


def collect(
    chosen: dict[str, Any] | None, stage_out: dict[str, dict[str, Any] | None], at: datetime
) -> list[DrilledBackup]:
    """One DrilledBackup per chosen set from the stage XComs (a missing XCom = a failed stage)."""
    if not chosen:
        return []
    out: list[DrilledBackup] = []
    for backup in chosen["backups"]:
        manifest = chosen["manifests"][backup]
        item = DrilledBackup(
            backup_id=backup,
            kind=manifest["kind"],
            taken_at=manifest["taken_at"],
            stored_bytes=manifest["data"]["bytes"],
            age_hours=age_hours(manifest["taken_at"], at),
        )
        for phase in _PHASES:
            result = (stage_out.get(phase) or {}).get(backup)
            if result is None:
                item.error = f"{phase} did not complete: see the {phase} task's log"
                break
            item.phases[phase] = float(result if phase == "restore" else result["seconds"])
        verified = (stage_out.get("verify") or {}).get(backup)
        if verified:
            item.relations = verified["relations"]
            item.rows = verified["rows"]
            item.counts_ok = verified["counts_ok"]
            item.differences = verified["differences"]
            item.checks = verified["checks"]
        out.append(item)
    return out


def build_report(
    target: str,
    run_id: str,
    at: datetime,
    seed: int | None,
    rto: float,
    drilled: list[DrilledBackup],
    chose_error: str | None = None,
) -> dict[str, Any]:
    """The drill report document."""
    backups = [d.to_dict() for d in drilled]
    passed = bool(backups) and all(b["ok"] and b["rto_seconds"] <= rto for b in backups)
    return {
        "target": target,
        "run_id": run_id,
        "drilled_at": at.isoformat(),
        "seed": seed,
        "rto_objective_seconds": rto,
        "outcome": "passed" if passed else "failed",
        "error": chose_error,
        "backups": backups,
    }


def report_mail(doc: dict[str, Any], link: str) -> tuple[str, str]:
    """Subject and body of the drill mail (sent on success too: that is the point)."""
    import html

    passed = doc["outcome"] == "passed"
    rto = doc["rto_objective_seconds"]
    worst = max((b["rto_seconds"] for b in doc["backups"]), default=0.0)
    subject = (
        f"[pg-backup] restore drill {'passed' if passed else 'FAILED'}: {doc['target']} "
        f"({len(doc['backups'])} backup(s), RTO {worst:.0f}s of {rto:.0f}s)"
    )
    table = format_report_table(doc["backups"], rto) if doc["backups"] else "(nothing drilled)"
    problems = [
        f"{b['backup_id']}: {line}"
        for b in doc["backups"]
        for line in ([b["error"]] if b["error"] else [])
        + b["differences"]
        + [f"check {c['name']!r} failed: {c['detail']}" for c in b["checks"] if not c["ok"]]
        + (
            [f"RTO {b['rto_seconds']:.0f}s over objective {rto:.0f}s"]
            if b["rto_seconds"] > rto
            else []
        )
    ]
    if doc.get("error"):
        problems.insert(0, doc["error"])
    body = (
        f"<p>Restore drill of <b>{html.escape(doc['target'])}</b>: "
        f"<b>{'passed' if passed else 'FAILED'}</b>.</p>"
        f"<pre>{html.escape(table)}</pre>"
        + (f"<p>Problems:</p><pre>{html.escape(chr(10).join(problems))}</pre>" if problems else "")
        + f"<p>Seed {doc['seed']} (trigger with it to repeat the pick). "
        f'Run: <a href="{link}">{link}</a></p>'
    )
    return subject, body


def run_report(cfg: Any, context: dict[str, Any]) -> dict[str, Any]:
    """Build, store (once per run) and mail the drill report; fail if the drill failed."""
    from pg_backup.notify import run_url, send_mail
    from pg_backup.storage import open_storage

    ti = context["ti"]
    run = context["dag_run"]
    at = run.run_after or run.logical_date
    chosen = ti.xcom_pull(task_ids="choose")
    stage_out = {p: ti.xcom_pull(task_ids=p) for p in _PHASES}
    drilled = collect(chosen, stage_out, at)
    rto = cfg.drill.rto.total_seconds()
    doc = build_report(
        cfg.name,
        run.run_id,
        at,
        chosen["seed"] if chosen else None,
        rto,
        drilled,
        None if chosen else "choose did not complete: see the choose task's log",
    )
    log.info("drill report:\n%s", format_report_table(doc["backups"], rto))
    store = open_storage(cfg.storage)
    key = layout.drill_report_key(cfg.name, at, run.run_id)
    first = not store.exists(key)  # a retried report task must not mail twice
    store.put_bytes(key, json.dumps(doc, indent=2).encode())
    if first:
        send_mail(cfg, *report_mail(doc, run_url(cfg.alerts.base_url, run.dag_id, run.run_id)))
    if doc["outcome"] != "passed":
        raise DrillError(f"restore drill failed; report at {store.describe(key)}")
    return {"key": key, "outcome": doc["outcome"]}
