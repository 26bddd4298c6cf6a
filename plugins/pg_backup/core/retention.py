"""Grandfather-father-son retention planning over backup sets.

Pure logic: given the backup sets found in storage, a policy and the time of
the run, decide which sets to keep (and why) and which to delete.  Nothing
here touches storage, Airflow or the clock, so the same input always yields
the same plan and the planner can be tested exhaustively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pg_backup.core.names import KINDS, STATUSES, Kind, Status

RULE_NEWER_THAN_RUN = "newer than run"
RULE_NEWEST_VERIFIED = "newest verified"
RULE_MIN_VERIFIED = "min verified"
RULE_HELD = "held for a human"

# (bucket sort key, bucket label) for one local timestamp.
_BucketFn = Callable[[datetime], tuple[tuple[int, ...], str]]


def _is_aware(value: datetime) -> bool:
    """Return True when ``value`` carries a usable UTC offset."""
    return value.tzinfo is not None and value.utcoffset() is not None


def _is_count(value: object) -> bool:
    """Return True for a real int (bool is an int subclass but not a count)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class BackupSet:
    """One backup set as listed in storage."""

    backup_id: str
    taken_at: datetime
    kind: Kind = "scheduled"
    status: Status = "verified"
    keep_days: int | None = None
    # Why a human must look at this set first (damage found in storage); a held set is kept
    # and counts as no verified set.
    hold: str | None = None

    def __post_init__(self) -> None:
        """Reject values the planner cannot reason about safely."""
        if not isinstance(self.backup_id, str) or not self.backup_id:
            raise ValueError(
                f"BackupSet.backup_id must be a non-empty string, got {self.backup_id!r}"
            )
        if not isinstance(self.taken_at, datetime) or not _is_aware(self.taken_at):
            raise ValueError(
                f"BackupSet.taken_at of {self.backup_id!r} must be a timezone-aware "
                f"datetime, got {self.taken_at!r}; attach tzinfo=datetime.UTC"
            )
        if self.kind not in KINDS:
            raise ValueError(
                f"BackupSet.kind of {self.backup_id!r} must be one of {KINDS}, got {self.kind!r}"
            )
        if self.status not in STATUSES:
            raise ValueError(
                f"BackupSet.status of {self.backup_id!r} must be one of {STATUSES}, "
                f"got {self.status!r}"
            )
        if self.keep_days is not None and (not _is_count(self.keep_days) or self.keep_days < 0):
            raise ValueError(
                f"BackupSet.keep_days of {self.backup_id!r} must be None or an "
                f"integer >= 0, got {self.keep_days!r}"
            )


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups of each granularity to keep, plus the safety rails."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    emergency_keep_days: int = 90
    grace_days: int = 3
    min_verified: int = 3
    max_delete_fraction: float = 0.5
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        """Validate eagerly so a bad config fails before any listing or deletion."""
        for name in ("daily", "weekly", "monthly", "emergency_keep_days", "grace_days"):
            value = getattr(self, name)
            if not _is_count(value) or value < 0:
                raise ValueError(
                    f"RetentionPolicy.{name} must be an integer >= 0, got {value!r}; "
                    f"set it to a whole number (0 disables that rule)"
                )
        if not _is_count(self.min_verified) or self.min_verified < 1:
            raise ValueError(
                f"RetentionPolicy.min_verified must be an integer >= 1, got "
                f"{self.min_verified!r}; set it to 1 or more so a restorable "
                f"backup always survives"
            )
        fraction = self.max_delete_fraction
        if (
            not isinstance(fraction, int | float)
            or isinstance(fraction, bool)
            or not 0 < fraction <= 1
        ):
            raise ValueError(
                f"RetentionPolicy.max_delete_fraction must be in (0, 1], got "
                f"{fraction!r}; use e.g. 0.5, and force=true for a one-off larger sweep"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError, TypeError) as exc:
            raise ValueError(
                f"RetentionPolicy.timezone {self.timezone!r} is not a known IANA "
                f"time zone; use a name such as 'UTC' or 'Europe/Berlin'"
            ) from exc

    @property
    def zone(self) -> ZoneInfo:
        """The zone whose calendar defines day, week and month buckets."""
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Decision:
    """The verdict for one set: every rule that keeps it; none means delete."""

    backup: BackupSet
    rules: tuple[str, ...]

    @property
    def keep(self) -> bool:
        """True when at least one rule keeps the set."""
        return bool(self.rules)


@dataclass(frozen=True)
class Plan:
    """The outcome of one retention run, newest set first."""

    as_of: datetime
    decisions: tuple[Decision, ...]
    refused: str | None
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    forced: bool = False

    @property
    def keep(self) -> tuple[BackupSet, ...]:
        """Sets that survive the run (all of them when the plan is refused)."""
        if self.refused is not None:
            return tuple(d.backup for d in self.decisions)
        return tuple(d.backup for d in self.decisions if d.keep)

    @property
    def delete(self) -> tuple[BackupSet, ...]:
        """Sets to delete now; empty when the plan is refused."""
        if self.refused is not None:
            return ()
        return self.would_delete

    @property
    def would_delete(self) -> tuple[BackupSet, ...]:
        """Sets no rule keeps, whether or not the plan was refused."""
        return tuple(d.backup for d in self.decisions if not d.keep)


def _younger_than(age: timedelta, days: int) -> bool:
    """``age < days`` for any whole number of days (a manifest may hold any number).

    ``timedelta(days=days)`` overflows past 999,999,999 days; comparing seconds does not.
    """
    return age.total_seconds() < days * 86400


def _newest_first(sets: Iterable[BackupSet]) -> list[BackupSet]:
    """Sort by taken_at descending, then backup_id ascending."""
    # Two stable sorts: the id order survives among equal timestamps, which
    # makes the plan independent of the order storage listed the sets in.
    by_id = sorted(sets, key=lambda s: s.backup_id)
    return sorted(by_id, key=lambda s: s.taken_at, reverse=True)


def _day_bucket(local: datetime) -> tuple[tuple[int, ...], str]:
    """Local calendar date."""
    return (local.year, local.month, local.day), local.date().isoformat()


def _week_bucket(local: datetime) -> tuple[tuple[int, ...], str]:
    """ISO year-week, so 2026-12-31 and 2027-01-01 share 2026-W53."""
    iso = local.isocalendar()
    return (iso.year, iso.week), f"{iso.year:04d}-W{iso.week:02d}"


def _month_bucket(local: datetime) -> tuple[tuple[int, ...], str]:
    """Local calendar year-month."""
    return (local.year, local.month), f"{local.year:04d}-{local.month:02d}"


def _gfs_picks(
    pool: list[BackupSet], count: int, bucket: _BucketFn, zone: ZoneInfo
) -> list[tuple[BackupSet, str]]:
    """Newest set of each of the newest ``count`` non-empty buckets."""
    newest: dict[tuple[int, ...], tuple[BackupSet, str]] = {}
    for backup in pool:  # newest first, so the first hit per bucket wins
        key, label = bucket(backup.taken_at.astimezone(zone))
        newest.setdefault(key, (backup, label))
    # Buckets are ranked by calendar key, not by timestamp: in zones that move
    # clocks back across midnight a local date is not one contiguous interval.
    ranked = sorted(newest, reverse=True)[:count]
    return [newest[key] for key in ranked]


def _refusal(decisions: tuple[Decision, ...], policy: RetentionPolicy, force: bool) -> str | None:
    """Why the whole plan must not be executed, or None."""
    total = len(decisions)
    if total == 0:
        return None
    if all(d.backup.status == "incomplete" for d in decisions):
        # Objects but no manifest anywhere looks like a wrong prefix, not a
        # real history; force must not be able to wipe a foreign location.
        return (
            f"all {total} backup sets found are incomplete (objects without a "
            f"manifest); the storage prefix may be wrong - check the configured "
            f"prefix; nothing was deleted (force does not override this)"
        )
    doomed = sum(1 for d in decisions if not d.keep)
    if not force and doomed / total > policy.max_delete_fraction:
        return (
            f"plan would delete {doomed} of {total} backup sets "
            f"({doomed / total:.0%}), more than max_delete_fraction "
            f"{policy.max_delete_fraction:g}; nothing was deleted - "
            f"trigger with force=true to allow"
        )
    return None


def plan_retention(
    sets: Iterable[BackupSet],
    policy: RetentionPolicy,
    as_of: datetime,
    *,
    force: bool = False,
) -> Plan:
    """Decide, for every set, the rules that keep it; the rest are deleted."""
    if not isinstance(as_of, datetime) or not _is_aware(as_of):
        raise ValueError(
            f"as_of must be a timezone-aware datetime, got {as_of!r}; "
            f"pass the run's logical time with tzinfo=datetime.UTC"
        )
    ordered = _newest_first(sets)
    rules: dict[str, list[str]] = {}
    for backup in ordered:
        if backup.backup_id in rules:
            raise ValueError(
                f"backup_id {backup.backup_id!r} is listed more than once; "
                f"deduplicate the listing before planning"
            )
        rules[backup.backup_id] = []

    past: list[BackupSet] = []
    for backup in ordered:
        if backup.taken_at > as_of:
            # A set from "the future" means clock skew or a concurrent run;
            # never judge it against a run that could not have seen it.
            rules[backup.backup_id].append(RULE_NEWER_THAN_RUN)
        else:
            past.append(backup)

    for backup in ordered:
        if backup.hold:
            rules[backup.backup_id].append(f"{RULE_HELD}: {backup.hold}")
    sound = [s for s in ordered if not s.hold]
    pool = [s for s in past if s.kind == "scheduled" and s.status == "verified" and not s.hold]
    zone = policy.zone
    for name, count, bucket in (
        ("daily", policy.daily, _day_bucket),
        ("weekly", policy.weekly, _week_bucket),
        ("monthly", policy.monthly, _month_bucket),
    ):
        for backup, label in _gfs_picks(pool, count, bucket, zone):
            rules[backup.backup_id].append(f"{name} {label}")

    for backup in past:
        age = as_of - backup.taken_at
        # An emergency set taken with verify=false is complete but unverified on purpose: the
        # user chose its keep_days, so it keeps them.
        deliberate = backup.kind == "emergency" and backup.status == "unverified"
        if backup.status != "verified" and not deliberate:
            # A broken set is useless for restore; keep it briefly for debugging.
            if _younger_than(age, policy.grace_days):
                rules[backup.backup_id].append(f"grace {policy.grace_days}d")
        elif backup.kind == "emergency":
            days = policy.emergency_keep_days if backup.keep_days is None else backup.keep_days
            if _younger_than(age, days):
                rules[backup.backup_id].append(f"emergency keep {days}d")

    verified = [s for s in sound if s.status == "verified"]
    newest = next((s for s in past if s.status == "verified" and not s.hold), None)
    if newest is not None:
        rules[newest.backup_id].append(RULE_NEWEST_VERIFIED)

    floor = min(policy.min_verified, len(verified))
    kept = sum(1 for s in verified if rules[s.backup_id])
    for backup in verified:
        if kept >= floor:
            break
        if not rules[backup.backup_id]:
            rules[backup.backup_id].append(RULE_MIN_VERIFIED)
            kept += 1

    decisions = tuple(Decision(s, tuple(rules[s.backup_id])) for s in ordered)
    return Plan(
        as_of=as_of,
        decisions=decisions,
        refused=_refusal(decisions, policy, force),
        policy=policy,
        forced=force,
    )


def _utc_iso(value: datetime) -> str:
    """ISO-8601 in UTC, so reports from different workers compare as strings."""
    return value.astimezone(UTC).isoformat()


def format_plan_table(plan: Plan) -> str:
    """Render the plan as a fixed-width text table for task logs."""
    zone = plan.policy.zone
    as_of = plan.as_of.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = (
        f"Retention plan as of {as_of} (calendar {plan.policy.timezone}): "
        f"{len(plan.decisions)} sets, keep {len(plan.keep)}, "
        f"delete {len(plan.delete)}"
    )
    if plan.forced:
        header += " [force]"
    lines = [header]
    if plan.refused is not None:
        lines.append(f"REFUSED ({len(plan.would_delete)} deletions held back): {plan.refused}")
    held = "delete (held: plan refused)"
    rows = [
        (
            d.backup.backup_id,
            d.backup.taken_at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z"),
            d.backup.kind,
            d.backup.status,
            ", ".join(d.rules) if d.keep else (held if plan.refused else "delete"),
        )
        for d in plan.decisions
    ]
    titles = ("SET ID", "TAKEN (LOCAL)", "KIND", "STATUS", "RULES / ACTION")
    widths = [max(len(row[i]) for row in [titles, *rows]) for i in range(len(titles))]

    def render(cells: tuple[str, ...]) -> str:
        # The last column is not padded so lines carry no trailing spaces.
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        return "  ".join([*padded, cells[-1]])

    lines.append(render(titles))
    lines.append(render(tuple("-" * w for w in widths)))
    lines.extend(render(row) for row in rows)
    if not rows:
        lines.append("(no backup sets)")
    return "\n".join(lines)


def plan_to_json(plan: Plan) -> dict[str, Any]:
    """Build a JSON-serialisable report of the plan."""
    zone = plan.policy.zone
    refused = plan.refused is not None
    return {
        "as_of": _utc_iso(plan.as_of),
        "policy": asdict(plan.policy),
        "forced": plan.forced,
        "refused": plan.refused,
        "counts": {
            "total": len(plan.decisions),
            "keep": len(plan.keep),
            "delete": len(plan.delete),
            "would_delete": len(plan.would_delete),
        },
        "sets": [
            {
                "backup_id": d.backup.backup_id,
                "taken_at": _utc_iso(d.backup.taken_at),
                "taken_at_local": d.backup.taken_at.astimezone(zone).isoformat(),
                "kind": d.backup.kind,
                "status": d.backup.status,
                "keep_days": d.backup.keep_days,
                "keep": d.keep or refused,
                "rules": list(d.rules),
            }
            for d in plan.decisions
        ],
    }
