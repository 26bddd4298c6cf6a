"""The catalog index: one small document per target saying what every set in storage is.

Stored at ``<target>/catalog.json`` (``layout.catalog_key``) and kept up to date by the tasks
that change a set's fate (upload, verify, drill report, sweep report), so that the Backups page
and the metrics read one object instead of listing a bucket. It is derived data: everything in
it comes from documents already in storage (``manifest.json``, ``verification.json``, drill and
sweep reports), so it can always be rebuilt from scratch, and is whenever it is missing,
unreadable or stale.

Pure functions only: each change is a function ``(index, facts, now) -> index`` that a writer
re-applies to the newest index after a conflicting concurrent write (see
``adapters.catalog_index``). Like ``manifest.json`` it holds operational metadata only: no
table names, no row counts, no error text from a database, no secret.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from pg_backup.core.layout import parse_backup_id
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.core.names import Kind, Status

FORMAT: Final = "pg_backup-catalog/1"
# Drill runs listed in the index (each set keeps its own newest drill besides).
DRILLS_KEPT: Final = 20
# A full rebuild (one listing) at least this often; the daily sweep rebuilds every day anyway.
REBUILD_AFTER: Final = timedelta(days=2)

Freshness = Literal["ok", "due", "stale", "none"]


class _Model(BaseModel):
    # Unknown fields are ignored: an index written by a newer release stays readable.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Destination(_Model):
    """One copy of the set: where it is, how many bytes it holds, until when it is locked."""

    name: str = "primary"
    location: str
    stored_bytes: int = Field(ge=0)
    locked_until: str | None = None


class VerificationEntry(_Model):
    """The daily verification restore of the set, from ``verification.json``."""

    status: Literal["verified", "failed"]
    checked_at: str
    # What was proven: "counts" (every relation holds exactly the snapshot's rows).
    proof: list[str]
    relations_checked: int
    mismatches: int
    warnings: int
    restore_seconds: float
    verify_seconds: float


class DrillEntry(_Model):
    """The newest restore drill of the set, from a drill report."""

    outcome: Literal["passed", "failed"]
    drilled_at: str
    dag_id: str
    run_id: str
    rto_seconds: float
    rto_objective_seconds: float
    # A category only ("row counts differ", "over RTO"...): never a table name or DB message.
    problem: str | None = None


class RetentionEntry(_Model):
    """What the newest retention sweep decided for the set."""

    planned_at: str
    run_id: str
    keep: bool
    rules: list[str]
    # Kept at least until this date (``expires_exact``: on exactly this date).
    expires_on: str | None = None
    expires_exact: bool = False
    dry_run: bool = False


class SetEntry(_Model):
    """One backup set: what ``manifest.json`` shows, its proof, its drill and its fate."""

    backup_id: str
    kind: Kind
    taken_at: str
    status: Status
    dag_id: str | None = None
    run_id: str | None = None
    reason: str | None = None
    keep_days: int | None = None
    triggered_by: str | None = None
    dump_bytes: int | None = None
    dump_format: str | None = None
    compression: str | None = None
    data_sha256: str | None = None
    server_version: str | None = None
    pg_dump_version: str | None = None
    package_version: str | None = None
    # The manifest records the source's locale and the set holds globals.sql.age: a restore can
    # bring back the database as it was (locale, roles, owners, grants, settings).
    as_it_was: bool = False
    verification: VerificationEntry | None = None
    drill: DrillEntry | None = None
    retention: RetentionEntry | None = None
    destinations: list[Destination] = []
    # Set by a rebuild from a listing (``adapters.catalog.inventory``): why nothing proves the set
    # is this deployment's (never deleted, never restored by the drill's pick) ...
    foreign: str | None = None
    # ... and what is damaged in one of ours (held for a human: never deleted, never "newest").
    problems: list[str] = []

    @property
    def held(self) -> bool:
        """Foreign or damaged: shown, kept, never the set a restore or freshness counts on."""
        return bool(self.foreign or self.problems)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the first destination (every destination holds the same objects)."""
        return self.destinations[0].stored_bytes if self.destinations else 0

    @property
    def taken(self) -> datetime:
        """``taken_at`` as an aware datetime."""
        return datetime.fromisoformat(self.taken_at)


class DrillRun(_Model):
    """One drill run: when, which sets, and how it ended."""

    run_id: str
    dag_id: str
    drilled_at: str
    outcome: Literal["passed", "failed"]
    backups: list[str]
    error: str | None = None


class SweepRun(_Model):
    """The newest retention sweep."""

    run_id: str
    planned_at: str
    dry_run: bool = False
    refused: str | None = None
    deleted: list[str] = []
    locked: list[str] = []


class CatalogIndex(_Model):
    """Every set of one target, newest first, plus the recent drills and the newest sweep."""

    format: Literal["pg_backup-catalog/1"] = FORMAT
    target: str
    built_at: str
    updated_at: str
    sets: list[SetEntry] = []
    drills: list[DrillRun] = []
    sweep: SweepRun | None = None

    def to_bytes(self) -> bytes:
        """Stable JSON."""
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse and validate (raises ValueError on anything else)."""
        return cls.model_validate_json(data)

    def get(self, backup_id: str) -> SetEntry | None:
        """The set with this id, if listed."""
        return next((s for s in self.sets if s.backup_id == backup_id), None)


def _iso(now: datetime) -> str:
    return now.astimezone(UTC).isoformat()


def empty(target: str, now: datetime) -> CatalogIndex:
    """An index with no sets, as built from an empty listing."""
    return CatalogIndex(target=target, built_at=_iso(now), updated_at=_iso(now))


def needs_rebuild(index: CatalogIndex | None, target: str, now: datetime) -> str | None:
    """Why the index must be rebuilt from a full listing, or None when it can be updated."""
    if index is None:
        return "missing or unreadable"
    if index.target != target:
        return f"written for target {index.target!r}"
    built = datetime.fromisoformat(index.built_at)
    if now - built > REBUILD_AFTER:
        return f"last rebuilt {built:%Y-%m-%d %H:%M} UTC, more than {REBUILD_AFTER} ago"
    return None


# --- building entries from the documents in storage -------------------------------------------


def proof_of(verification: Verification) -> list[str]:
    """What a verification record proves (empty when it failed).

    ``verification.proven`` names it (counts, content, objects); records written before it
    existed proved counts only.
    """
    if verification.status != "verified":
        return []
    return list(verification.proven or ["counts"])


def verification_entry(verification: Verification) -> VerificationEntry:
    """The index's view of ``verification.json``."""
    return VerificationEntry(
        status=verification.status,
        checked_at=verification.checked_at,
        proof=proof_of(verification),
        relations_checked=verification.relations_checked,
        mismatches=verification.mismatches,
        warnings=verification.warnings,
        restore_seconds=verification.restore_seconds,
        verify_seconds=verification.verify_seconds,
    )


def entry_from_manifest(
    manifest: Manifest,
    location: str,
    verification: Verification | None = None,
    locked_until: datetime | None = None,
) -> SetEntry:
    """A complete set: everything ``manifest.json`` (and ``verification.json``) may show."""
    emergency = manifest.emergency
    return SetEntry(
        backup_id=manifest.backup_id,
        kind=manifest.kind,
        taken_at=manifest.taken_at,
        status=(verification.status if verification else "unverified"),
        dag_id=manifest.dag_id,
        run_id=manifest.run_id,
        reason=emergency.reason if emergency else None,
        keep_days=emergency.keep_days if emergency else None,
        triggered_by=emergency.triggered_by if emergency else None,
        dump_bytes=manifest.dump_bytes,
        dump_format=manifest.dump_format,
        compression=manifest.compression,
        data_sha256=manifest.data.sha256,
        server_version=manifest.server_version,
        pg_dump_version=manifest.pg_dump_version,
        package_version=manifest.package_version,
        as_it_was=manifest.database is not None and manifest.globals is not None,
        verification=verification_entry(verification) if verification else None,
        destinations=[
            Destination(
                location=location,
                stored_bytes=manifest.data.bytes + manifest.tables.bytes,
                locked_until=_iso(locked_until) if locked_until else None,
            )
        ],
    )


def incomplete_entry(backup_id: str, location: str, stored_bytes: int) -> SetEntry:
    """A set folder without a usable manifest: only what its id and listing say."""
    _, taken_at, kind = parse_backup_id(backup_id)
    return SetEntry(
        backup_id=backup_id,
        kind=kind,
        taken_at=_iso(taken_at),
        status="incomplete",
        destinations=[Destination(location=location, stored_bytes=stored_bytes)],
    )


# --- changes: each returns a new index ---------------------------------------------------------


def _sorted(sets: Iterable[SetEntry]) -> list[SetEntry]:
    return sorted(sets, key=lambda s: (s.taken, s.backup_id), reverse=True)


def _replace(index: CatalogIndex, now: datetime, **fields: Any) -> CatalogIndex:
    return index.model_copy(update={"updated_at": _iso(now), **fields})


def with_set(index: CatalogIndex, entry: SetEntry, now: datetime) -> CatalogIndex:
    """Add or replace a set (an upload rerun replaces its bytes: its old drill no longer holds).

    The sweep's fate of the set is kept: it depends on the set's id and time, not its bytes.
    """
    old = index.get(entry.backup_id)
    if old is not None and old.retention is not None and entry.retention is None:
        entry = entry.model_copy(update={"retention": old.retention})
    others = [s for s in index.sets if s.backup_id != entry.backup_id]
    return _replace(index, now, sets=_sorted([*others, entry]))


def with_verification(
    index: CatalogIndex, verification: Verification, now: datetime
) -> CatalogIndex | None:
    """Record a verification outcome; None when the set is not in the index (rebuild instead)."""
    old = index.get(verification.backup_id)
    if old is None:
        return None
    entry = old.model_copy(
        update={
            "status": verification.status,
            "verification": verification_entry(verification),
        }
    )
    return with_set(index, entry, now)


def _drill_problem(backup: Mapping[str, Any], rto: float) -> str | None:
    """A category for a failed drill of one set; never the report's database details."""
    if backup.get("error"):
        # collect() writes "<phase> did not complete: see the <phase> task's log".
        return str(backup["error"]).split(":", 1)[0][:80]
    if not backup.get("counts_ok"):
        return "row counts differ"
    checks = backup.get("checks") or []
    failed = sum(1 for c in checks if not c.get("ok"))
    if failed:
        return f"{failed} of {len(checks)} checks failed"
    if float(backup.get("rto_seconds", 0.0)) > rto:
        return f"over RTO ({float(backup['rto_seconds']):.0f} s > {rto:.0f} s)"
    return None


def drill_entries(report: Mapping[str, Any], dag_id: str) -> dict[str, DrillEntry]:
    """Per drilled set, its outcome in a drill report (``core.drill_report.build_report``)."""
    rto = float(report["rto_objective_seconds"])
    out = {}
    for backup in report.get("backups", []):
        problem = _drill_problem(backup, rto)
        out[backup["backup_id"]] = DrillEntry(
            outcome="failed" if problem or not backup.get("ok") else "passed",
            drilled_at=report["drilled_at"],
            dag_id=dag_id,
            run_id=report["run_id"],
            rto_seconds=float(backup.get("rto_seconds", 0.0)),
            rto_objective_seconds=rto,
            problem=problem or (None if backup.get("ok") else "failed"),
        )
    return out


def with_drill(
    index: CatalogIndex, report: Mapping[str, Any], dag_id: str, now: datetime
) -> CatalogIndex:
    """Record a drill report: each drilled set's newest drill, and the run in the drill list."""
    run = DrillRun(
        run_id=report["run_id"],
        dag_id=dag_id,
        drilled_at=report["drilled_at"],
        outcome="passed" if report.get("outcome") == "passed" else "failed",
        backups=[b["backup_id"] for b in report.get("backups", [])],
        # Up to the first colon: the drill's own sentence ("choose did not complete"), never
        # what follows it.
        error=(str(report["error"]).split(":", 1)[0][:80] if report.get("error") else None),
    )
    when = datetime.fromisoformat(run.drilled_at)
    entries = drill_entries(report, dag_id)
    sets = []
    for entry in index.sets:
        drilled = entries.get(entry.backup_id)
        newer = drilled is not None and (
            entry.drill is None or datetime.fromisoformat(entry.drill.drilled_at) <= when
        )
        sets.append(entry.model_copy(update={"drill": drilled}) if newer else entry)
    drills = [d for d in index.drills if d.run_id != run.run_id] + [run]
    drills.sort(key=lambda d: datetime.fromisoformat(d.drilled_at), reverse=True)
    return _replace(index, now, sets=sets, drills=drills[:DRILLS_KEPT])


def _add_months(day: date, months: int) -> date:
    total = day.year * 12 + day.month - 1 + months
    year, month = divmod(total, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def expiry(rules: list[str], taken_at: datetime, policy: Mapping[str, Any]) -> tuple[date, bool]:
    """The date a kept set's rules lapse, and whether that date is exact.

    Emergency keep and grace days lapse on an exact date. A daily/weekly/monthly rule lapses
    once as many newer buckets hold a verified set: the date assumes one set per bucket from
    now on, so it is a "not before". Rules with no date of their own (``newest verified``,
    ``min verified``) keep the set until another rule's date passes and a newer set exists.

    :param rules: the planner's rules for the set (``core.retention``); must not be empty
    :param policy: the plan's policy as stored in the sweep report (``plan_to_json``)
    :raises ValueError: no rule has a date
    """
    dates: list[date] = []
    exact = True
    for rule in rules:
        name, _, label = rule.partition(" ")
        if name == "daily":
            dates.append(date.fromisoformat(label) + timedelta(days=int(policy["daily"])))
            exact = False
        elif name == "weekly":
            year, week = label.split("-W")
            start = date.fromisocalendar(int(year), int(week), 1)
            dates.append(start + timedelta(weeks=int(policy["weekly"])))
            exact = False
        elif name == "monthly":
            first = date.fromisoformat(f"{label}-01")
            dates.append(_add_months(first, int(policy["monthly"])))
            exact = False
        elif name in ("emergency", "grace"):
            days = int(label.rsplit(" ", 1)[-1].rstrip("d"))
            dates.append((taken_at + timedelta(days=days)).date())
        else:
            exact = False
    if not dates:
        raise ValueError(f"no rule with a date in {rules!r}")
    return max(dates), exact


def retention_entries(report: Mapping[str, Any]) -> dict[str, RetentionEntry]:
    """Per set, the fate a sweep report gives it (``stages.sweep.store_report``)."""
    plan = report["plan"]
    dry_run = bool((report.get("delete") or {}).get("dry_run"))
    out = {}
    for item in plan.get("sets", []):
        rules = list(item.get("rules") or [])
        on: str | None = None
        exact = False
        if item.get("keep") and rules:
            try:
                when, exact = expiry(
                    rules, datetime.fromisoformat(item["taken_at"]), plan["policy"]
                )
                on = when.isoformat()
            except ValueError:
                on = None
        elif not item.get("keep"):
            on, exact = plan["as_of"][:10], True
        out[item["backup_id"]] = RetentionEntry(
            planned_at=plan["as_of"],
            run_id=report["run_id"],
            keep=bool(item.get("keep")),
            rules=rules,
            expires_on=on,
            expires_exact=exact,
            dry_run=dry_run,
        )
    return out


def with_sweep(index: CatalogIndex, report: Mapping[str, Any], now: datetime) -> CatalogIndex:
    """Record a sweep report: every planned set's fate; sets it deleted leave the index."""
    deleted_result = report.get("delete") or {}
    deleted = set(deleted_result.get("deleted_sets") or [])
    fates = retention_entries(report)
    sets = [
        s.model_copy(update={"retention": fates[s.backup_id]}) if s.backup_id in fates else s
        for s in index.sets
        if s.backup_id not in deleted
    ]
    sweep = SweepRun(
        run_id=report["run_id"],
        planned_at=report["plan"]["as_of"],
        dry_run=bool(deleted_result.get("dry_run")),
        refused=report["plan"].get("refused"),
        deleted=sorted(deleted),
        locked=list(deleted_result.get("locked") or []),
    )
    return _replace(index, now, sets=sets, sweep=sweep)


def rebuilt(
    target: str,
    sets: Iterable[SetEntry],
    drill_reports: Iterable[tuple[Mapping[str, Any], str]],
    sweep_report: Mapping[str, Any] | None,
    now: datetime,
) -> CatalogIndex:
    """An index from scratch: the listed sets, then drill reports (oldest first), then the sweep.

    :param drill_reports: ``(report, drill DAG id)`` pairs, in any order
    """
    index = empty(target, now).model_copy(update={"sets": _sorted(sets)})
    ordered = sorted(drill_reports, key=lambda r: datetime.fromisoformat(r[0]["drilled_at"]))
    for report, dag_id in ordered:
        index = with_drill(index, report, dag_id, now)
    if sweep_report is not None:
        index = with_sweep(index, sweep_report, now)
    return index.model_copy(update={"built_at": _iso(now), "updated_at": _iso(now)})


# --- what the page and the metrics read --------------------------------------------------------


def newest_verified(index: CatalogIndex) -> SetEntry | None:
    """The newest verified set (scheduled or emergency) not held: what a restore would use."""
    return next((s for s in index.sets if s.status == "verified" and not s.held), None)


def newest_drilled(index: CatalogIndex) -> SetEntry | None:
    """The newest set whose newest drill passed: proven restorable from storage with the key."""
    return next((s for s in index.sets if s.drill and s.drill.outcome == "passed"), None)


def freshness(age: timedelta | None, sla: timedelta, limit: timedelta) -> Freshness:
    """Green/amber/red for the newest verified set's age.

    ``stale`` (red): older than ``retention.freshness``, the sweep's alert fires. ``due``
    (amber): within one SLA of that limit, so the next run must end green within its SLA.
    ``ok`` (green) otherwise; ``none`` when there is no verified set at all.
    """
    if age is None:
        return "none"
    if age > limit:
        return "stale"
    if age > limit - sla:
        return "due"
    return "ok"


def metric_values(index: CatalogIndex, now: datetime) -> list[tuple[str, dict[str, str], float]]:
    """Per-target metrics computed from the index: ``(name, extra labels, value)``.

    Ages and timestamps are in seconds, sizes in bytes. Metrics without a subject (no verified
    set yet) are left out, so an alert can use ``absent()``; ``sets`` is always there.
    """
    out: list[tuple[str, dict[str, str], float]] = []
    verified = newest_verified(index)
    if verified is not None:
        out += [
            ("newest_verified_timestamp_seconds", {}, verified.taken.timestamp()),
            ("newest_verified_age_seconds", {}, (now - verified.taken).total_seconds()),
            ("newest_verified_stored_bytes", {}, float(verified.stored_bytes)),
            ("newest_verified_dump_bytes", {}, float(verified.dump_bytes or 0)),
        ]
    drilled = newest_drilled(index)
    if drilled is not None:
        out += [
            ("newest_drilled_timestamp_seconds", {}, drilled.taken.timestamp()),
            ("newest_drilled_age_seconds", {}, (now - drilled.taken).total_seconds()),
        ]
    if index.drills:
        last = index.drills[0]
        out += [
            (
                "last_drill_timestamp_seconds",
                {},
                datetime.fromisoformat(last.drilled_at).timestamp(),
            ),
            ("last_drill_passed", {}, 1.0 if last.outcome == "passed" else 0.0),
        ]
    out.append(("stored_bytes", {}, float(sum(s.stored_bytes for s in index.sets))))
    for status in ("verified", "failed", "unverified", "incomplete"):
        count = sum(1 for s in index.sets if s.status == status)
        out.append(("sets", {"status": status}, float(count)))
    out.append(("sets_held", {}, float(sum(1 for s in index.sets if s.held))))
    out.append(
        (
            "catalog_updated_timestamp_seconds",
            {},
            datetime.fromisoformat(index.updated_at).timestamp(),
        )
    )
    return out
