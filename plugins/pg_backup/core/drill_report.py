"""The restore drill's decisions and report, as pure functions.

Which backups to drill, and what the stored and mailed report says about them.
"""

from __future__ import annotations

import html
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pg_backup.core.errors import DrillError
from pg_backup.core.names import DRILL_PHASES, DrillTask
from pg_backup.core.redact import first_line


def choose_backups(
    candidates: list[dict[str, Any]], seed: int, backup_id: str | None = None
) -> list[str]:
    """The newest verified set plus one older complete set picked with a recorded seed.

    :param candidates: complete sets, each ``{"backup_id", "taken_at", "status"}``
    :param seed: the seed of the random pick (stored in the report, so a drill can be repeated)
    :param backup_id: drill exactly this set instead
    :raises DrillError: when nothing can be drilled
    """
    if backup_id:
        if not any(c["backup_id"] == backup_id for c in candidates):
            raise DrillError(
                f"backup {backup_id} is not a complete set in storage (see `pg-backup list`)"
            )
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


@dataclass(frozen=True)
class CheckResult:
    """One invariant check against the restored database."""

    name: str
    ok: bool
    detail: str


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
    lines = [f"{'backup':<44} {'age h':>7} {'RTO s':>8} {'proof':>7} {'checks':>7}  result"]
    for b in backups:
        checks = f"{sum(c['ok'] for c in b['checks'])}/{len(b['checks'])}"
        result = (
            "ok"
            if b["ok"] and b["rto_seconds"] <= rto
            else ("over RTO" if b["ok"] else (b["error"] or "failed").splitlines()[0][:60])
        )
        lines.append(
            f"{b['backup_id']:<44} {b['age_hours']:>7.1f} {b['rto_seconds']:>8.1f} "
            f"{'proven' if b['counts_ok'] else 'DIFF':>7} {checks:>7}  {result}"
        )
    return "\n".join(lines)


# The tasks that handle each chosen set, in order: a set's first recorded failure among them is
# the cause its report line gives.
_PER_SET_TASKS = (
    DrillTask.FETCH,
    DrillTask.DECRYPT,
    DrillTask.DECOMPRESS,
    DrillTask.CREATE_DRILL_DBS,
    DrillTask.RESTORE,
    DrillTask.VERIFY,
)


def _cause(phase: DrillTask, recorded: dict[str, str]) -> str:
    """One line: why ``phase`` has no output for a set (the first failure recorded for it)."""
    for task in _PER_SET_TASKS:
        if task.value in recorded:
            return f"{task.value} failed: {first_line(recorded[task.value], 1000)}"
    return (
        f"{phase} did not complete and recorded no cause (killed, or timed out before it could "
        f"say): see the {phase} task's log"
    )


def collect(
    chosen: dict[str, Any] | None,
    stage_out: dict[DrillTask, dict[str, Any] | None],
    at: datetime,
    causes: dict[str, dict[str, str]] | None = None,
) -> list[DrilledBackup]:
    """One DrilledBackup per chosen set from the phase XComs (a missing XCom = a failed phase).

    :param chosen: the choose task's XCom (``backups``, ``manifests``, ``seed``)
    :param stage_out: phase -> that task's XCom, ``{backup_id: {"seconds": ...}, ...}``
    :param causes: backup id -> {task id: the one-line cause that task recorded on failure}
    """
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
        for phase in DRILL_PHASES:
            result = (stage_out.get(phase) or {}).get(backup)
            if result is None:
                item.error = _cause(phase, (causes or {}).get(backup, {}))
                break
            item.phases[phase.value] = float(result["seconds"])
        verified = (stage_out.get(DrillTask.VERIFY) or {}).get(backup)
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
    """The drill report document (stored as JSON beside the sets, and mailed)."""
    backups = [d.to_dict() for d in drilled]
    passed = bool(backups) and all(b["ok"] and b["rto_seconds"] <= rto for b in backups)
    return {
        "target": target,
        "run_id": run_id,
        "drilled_at": at.isoformat(),
        "seed": seed,
        "rto_objective_seconds": rto,
        "outcome": "passed" if passed else "failed",
        "error": first_line(chose_error) if chose_error else None,
        "backups": backups,
    }


def stored_report(doc: dict[str, Any]) -> dict[str, Any]:
    """The report as stored beside the sets: readable without the key, so it names no table.

    ``DESIGN.md``: table names, counts and content checksums are kept only in encrypted
    documents. Each backup's ``differences`` (which name tables) become ``mismatches`` (how many),
    and the invariant checks keep their name and outcome but not their ``detail`` (which may
    quote values). The log and the mail keep the whole report.

    :param doc: a report from ``build_report``
    :returns: a new document; ``doc`` is left as it was
    """
    backups = []
    for b in doc["backups"]:
        kept = {k: v for k, v in b.items() if k != "differences"}
        kept["mismatches"] = len(b.get("differences") or [])
        kept["checks"] = [{"name": c["name"], "ok": c["ok"]} for c in b.get("checks", [])]
        backups.append(kept)
    return {**doc, "backups": backups}


def report_mail(doc: dict[str, Any], link: str) -> tuple[str, str]:
    """Subject and HTML body of the drill mail (sent on success too: that is the point)."""
    passed = doc["outcome"] == "passed"
    rto = doc["rto_objective_seconds"]
    worst = max((b["rto_seconds"] for b in doc["backups"]), default=0.0)
    source = f" from {doc['destination']}" if doc.get("destination") else ""
    subject = (
        f"[pg-backup] restore drill {'passed' if passed else 'FAILED'}: {doc['target']}{source} "
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
    if problems:
        subject += f": {first_line(problems[0], 120)}"
    problems = [first_line(p, 1000) for p in problems]
    body = (
        f"<p>Restore drill of <b>{html.escape(doc['target'])}</b>: "
        f"<b>{'passed' if passed else 'FAILED'}</b>.</p>"
        + (
            f"<p>From destination <b>{html.escape(doc['destination'])}</b>"
            + (
                f"; copies hash-checked in {html.escape(', '.join(doc['checked_in']))}"
                if doc.get("checked_in")
                else ""
            )
            + ".</p>"
            if doc.get("destination")
            else ""
        )
        + f"<pre>{html.escape(table)}</pre>"
        + (f"<p>Problems:</p><pre>{html.escape(chr(10).join(problems))}</pre>" if problems else "")
        + f"<p>Seed {doc['seed']} (trigger with it to repeat the pick). "
        f'Run: <a href="{link}">{link}</a></p>'
    )
    return subject, body
