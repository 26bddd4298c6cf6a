"""Tests for pg_backup.core.retention: GFS retention planning and its safety rails."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pg_backup.core.retention import (
    BackupSet,
    Kind,
    Plan,
    RetentionPolicy,
    Status,
    format_plan_table,
    plan_retention,
    plan_to_json,
)

BERLIN = ZoneInfo("Europe/Berlin")
BASE = datetime(2025, 1, 1, tzinfo=UTC)
ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Asia/Kolkata",
)
RULE_RE = re.compile(
    r"^(daily \d{4}-\d{2}-\d{2}|weekly \d{4}-W\d{2}|monthly \d{4}-\d{2}"
    r"|newer than run|emergency keep \d+d|grace \d+d|newest verified|min verified)$"
)
KIND_CHOICES: tuple[Kind, ...] = ("scheduled", "scheduled", "emergency")
# Biased towards verified so GFS has something to choose from.
STATUS_CHOICES: tuple[Status, ...] = (
    "verified",
    "verified",
    "verified",
    "failed",
    "unverified",
    "incomplete",
)
PROPERTY = settings(max_examples=200, deadline=None)

# Only the GFS counts matter in most worked examples; the rails are opened up
# so they do not blur what the example is about.
GFS_ONLY: dict[str, Any] = {"min_verified": 1, "max_delete_fraction": 1.0}


def at(day: date, hour: int = 2, minute: int = 0) -> datetime:
    """UTC timestamp on ``day``."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def kept_ids(plan: Plan) -> set[str]:
    """Ids that some rule keeps (ignores refusal)."""
    return {d.backup.backup_id for d in plan.decisions if d.keep}


def rules_of(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Map each set id to its rules."""
    return {d.backup.backup_id: d.rules for d in plan.decisions}


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[BackupSet]:
    """Arbitrary histories over ~2 years, clustered so several sets share a day."""
    days = draw(st.lists(st.integers(0, 730), min_size=1, max_size=25))
    minutes = st.one_of(st.sampled_from([0, 30, 120, 1410]), st.integers(0, 1439))
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(days),
                minutes,
                st.sampled_from(KIND_CHOICES),
                st.sampled_from(STATUS_CHOICES),
                st.none() | st.integers(0, 200),
            ),
            max_size=40,
        )
    )
    return [
        BackupSet(
            backup_id=f"set-{i:03d}",
            taken_at=BASE + timedelta(days=day, minutes=minute),
            kind=kind,
            status=status,
            keep_days=keep_days,
        )
        for i, (day, minute, kind, status, keep_days) in enumerate(rows)
    ]


policies = st.builds(
    RetentionPolicy,
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 14),
    emergency_keep_days=st.integers(0, 120),
    grace_days=st.integers(0, 10),
    min_verified=st.integers(1, 6),
    max_delete_fraction=st.sampled_from([0.1, 0.3, 0.5, 0.75, 1.0]) | st.floats(0.01, 1.0),
    timezone=st.sampled_from(ZONES),
)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[BackupSet], RetentionPolicy, datetime, bool]:
    """A history, a policy, a run time (sometimes exactly on a set) and force."""
    sets = draw(histories())
    offsets = st.integers(-10 * 1440, 760 * 1440).map(lambda m: timedelta(minutes=m))
    as_of = BASE + draw(offsets)
    if len(sets) > 0 and draw(st.booleans()):
        as_of = draw(st.sampled_from(sets)).taken_at
    return sets, draw(policies), as_of, draw(st.booleans())


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_newest_verified_set_is_never_deleted(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """The newest verified set, overall and as of the run, is always kept."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    decisions = {d.backup.backup_id: d for d in plan.decisions}
    verified = [s for s in sets if s.status == "verified"]
    if verified:
        newest = max(verified, key=lambda s: s.taken_at)
        assert decisions[newest.backup_id].keep
    past = [s for s in verified if s.taken_at <= as_of]
    if past:
        newest_past = max(s.taken_at for s in past)
        assert any(
            "newest verified" in decisions[s.backup_id].rules
            for s in past
            if s.taken_at == newest_past
        )


@PROPERTY
@given(scenarios())
def test_min_verified_floor_holds(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """At least min(min_verified, verified present) verified sets are kept."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    verified = sum(1 for s in sets if s.status == "verified")
    kept = sum(1 for d in plan.decisions if d.keep and d.backup.status == "verified")
    assert kept >= min(policy.min_verified, verified)


@PROPERTY
@given(scenarios())
def test_every_kept_set_names_its_rules(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """Each kept set carries >= 1 well-formed, non-repeated rule name."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    assert len(plan.decisions) == len(sets)
    for decision in plan.decisions:
        assert decision.keep == bool(decision.rules)
        assert len(set(decision.rules)) == len(decision.rules)
        for rule in decision.rules:
            assert RULE_RE.match(rule), rule
    if plan.refused is None:
        assert {s.backup_id for s in plan.keep} == kept_ids(plan)


@PROPERTY
@given(scenarios())
def test_replanning_the_kept_sets_deletes_nothing(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """Planning again on the survivors is a no-op with identical rules."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    again = plan_retention(plan.keep, policy, as_of)
    assert again.delete == ()
    # Stronger: the rule-kept sets are a fixed point, refusal or not.
    survivors = [d.backup for d in plan.decisions if d.keep]
    replanned = plan_retention(survivors, policy, as_of, force=True)
    assert replanned.would_delete == ()
    before = rules_of(plan)
    assert all(d.rules == before[d.backup.backup_id] for d in replanned.decisions)


@PROPERTY
@given(scenarios(), st.data())
def test_plan_is_deterministic_and_ignores_input_order(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
    data: st.DataObject,
) -> None:
    """Same input gives the same plan, whatever order the listing came in."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    assert plan == plan_retention(list(sets), policy, as_of, force=force)
    shuffled = data.draw(st.permutations(sets))
    assert plan == plan_retention(iter(shuffled), policy, as_of, force=force)
    order = [(-d.backup.taken_at.timestamp(), d.backup.backup_id) for d in plan.decisions]
    assert order == sorted(order)


@PROPERTY
@given(scenarios())
def test_refused_plan_deletes_nothing(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """A refused plan keeps every set; force only fails to override a bad prefix."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    if plan.refused is not None:
        assert plan.delete == ()
        assert set(plan.keep) == set(sets)
        assert plan_to_json(plan)["counts"]["delete"] == 0
        if force:
            assert all(s.status == "incomplete" for s in sets)
    if sets and all(s.status == "incomplete" for s in sets):
        assert plan.refused is not None


@PROPERTY
@given(scenarios())
def test_max_delete_fraction_is_respected_without_force(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """Unforced plans never delete more than max_delete_fraction of the sets."""
    sets, policy, as_of, _ = scenario
    plan = plan_retention(sets, policy, as_of, force=False)
    if sets:
        assert len(plan.delete) / len(sets) <= policy.max_delete_fraction
        if len(plan.would_delete) / len(sets) > policy.max_delete_fraction:
            assert plan.refused is not None
            # The wrong-prefix refusal takes precedence over this one.
            assert "force=true" in plan.refused or "prefix" in plan.refused


@PROPERTY
@given(scenarios())
def test_reports_render_for_any_plan(
    scenario: tuple[list[BackupSet], RetentionPolicy, datetime, bool],
) -> None:
    """The table lists every set and the JSON report survives json.dumps."""
    sets, policy, as_of, force = scenario
    plan = plan_retention(sets, policy, as_of, force=force)
    table = format_plan_table(plan)
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line}
    assert all(s.backup_id in rows for s in sets)
    report = json.loads(json.dumps(plan_to_json(plan)))
    assert report["counts"]["total"] == len(sets)
    assert report["counts"]["delete"] == len(plan.delete)
    assert [r["backup_id"] for r in report["sets"]] == [d.backup.backup_id for d in plan.decisions]


# --------------------------------------------------------------------------
# Worked examples
# --------------------------------------------------------------------------


def test_year_of_daily_backups_keeps_exact_gfs_selection() -> None:
    """365 daily sets under 7/4/12 keep exactly 20 known dates (with force)."""
    days = [date(2026, 1, 1) + timedelta(days=i) for i in range(365)]
    sets = [BackupSet(d.isoformat(), at(d)) for d in days]
    as_of = at(date(2027, 1, 1))
    policy = RetentionPolicy()  # daily 7, weekly 4, monthly 12

    # daily: the 7 newest days
    daily = {f"2026-12-{d:02d}" for d in range(25, 32)}
    # weekly: ISO weeks 2026-W53 (Dec 28 - Jan 3, newest Dec 31) and W52
    # (newest Sun Dec 27) are already daily; W51 and W50 add their Sundays.
    weekly_extra = {"2026-12-20", "2026-12-13"}
    # monthly: month-ends Jan..Nov (December's Dec 31 is already daily).
    monthly_extra = {
        "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
        "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31",
        "2026-11-30",
    }  # fmt: skip
    expected = daily | weekly_extra | monthly_extra
    assert len(expected) == 7 + 2 + 11 == 20

    forced = plan_retention(sets, policy, as_of, force=True)
    assert forced.refused is None
    assert {s.backup_id for s in forced.keep} == expected
    assert len(forced.keep) == 20
    assert len(forced.delete) == 345
    rules = rules_of(forced)
    assert rules["2026-12-31"] == (
        "daily 2026-12-31",
        "weekly 2026-W53",
        "monthly 2026-12",
        "newest verified",
    )
    assert rules["2026-12-27"] == ("daily 2026-12-27", "weekly 2026-W52")
    assert rules["2026-12-13"] == ("weekly 2026-W50",)
    assert rules["2026-02-28"] == ("monthly 2026-02",)

    # The first sweep over a year deletes 94%: refused unless forced.
    unforced = plan_retention(sets, policy, as_of)
    assert unforced.refused is not None
    assert "345 of 365" in unforced.refused
    assert "force=true" in unforced.refused
    assert unforced.delete == ()


def test_recent_failed_verifications_keep_older_verified_sets() -> None:
    """Failed recent sets never displace verified ones; gaps do not shrink GFS."""
    verified = [date(2026, 3, d) for d in range(1, 11)]
    failed = [date(2026, 3, d) for d in range(11, 15)]
    sets = [BackupSet(f"v{d.day:02d}", at(d)) for d in verified] + [
        BackupSet(f"f{d.day:02d}", at(d), status="failed") for d in failed
    ]
    as_of = datetime(2026, 3, 15, tzinfo=UTC)

    policy = RetentionPolicy(daily=3, weekly=0, monthly=0, min_verified=4, max_delete_fraction=1.0)
    plan = plan_retention(sets, policy, as_of)
    rules = rules_of(plan)
    assert rules["v10"] == ("daily 2026-03-10", "newest verified")
    assert rules["v09"] == ("daily 2026-03-09",)
    assert rules["v08"] == ("daily 2026-03-08",)
    assert rules["v07"] == ("min verified",)
    # failed sets: kept only while younger than grace_days (3d)
    assert rules["f14"] == rules["f13"] == rules["f12"] == ("grace 3d",)
    assert rules["f11"] == ()
    assert {s.backup_id for s in plan.delete} == {f"v0{d}" for d in range(1, 7)} | {"f11"}

    # restic-style: the newest 7 days *with* a verified set, despite the gap.
    default_daily = RetentionPolicy(weekly=0, monthly=0, max_delete_fraction=1.0)
    plan = plan_retention(sets, default_daily, as_of)
    daily = {i for i, r in rules_of(plan).items() if any("daily" in x for x in r)}
    assert daily == {f"v{d:02d}" for d in range(4, 11)}


def test_dst_fall_back_fixed_utc_schedule_buckets_by_berlin_date() -> None:
    """A 22:30 UTC cron lands twice on Berlin's 25 Oct 2026; bucketing follows."""
    # Clocks go back at 01:00 UTC on 25 Oct 2026: 22:30 UTC is 00:30 CEST the
    # next day before the change and 23:30 CET the same day after it.
    sets = [
        BackupSet(f"utc-10-{d}", datetime(2026, 10, d, 22, 30, tzinfo=UTC)) for d in range(20, 27)
    ]
    as_of = datetime(2026, 10, 27, tzinfo=UTC)
    shape = {"daily": 3, "weekly": 0, "monthly": 0, **GFS_ONLY}
    berlin = RetentionPolicy(timezone="Europe/Berlin", **shape)
    utc = RetentionPolicy(timezone="UTC", **shape)

    local_plan = plan_retention(sets, berlin, as_of)
    assert kept_ids(local_plan) == {"utc-10-26", "utc-10-25", "utc-10-23"}
    rules = rules_of(local_plan)
    assert rules["utc-10-26"] == ("daily 2026-10-26", "newest verified")
    assert rules["utc-10-25"] == ("daily 2026-10-25",)  # beats utc-10-24, same day
    assert rules["utc-10-23"] == ("daily 2026-10-24",)
    assert rules["utc-10-24"] == ()

    utc_plan = plan_retention(sets, utc, as_of)
    assert kept_ids(utc_plan) == {"utc-10-26", "utc-10-25", "utc-10-24"}


def test_dst_local_0030_schedule_weeks_and_months_follow_berlin_calendar() -> None:
    """00:30 Berlin backups across the October change bucket by local week/month."""
    local_days = [date(2026, 10, d) for d in range(22, 32)] + [
        date(2026, 11, 1),
        date(2026, 11, 2),
    ]
    sets = [
        BackupSet(
            f"local-{d.isoformat()}",
            datetime(d.year, d.month, d.day, 0, 30, tzinfo=BERLIN).astimezone(UTC),
        )
        for d in local_days
    ]
    # Offsets really change: +02:00 before 25 Oct, +01:00 from then on.
    assert sets[0].taken_at.hour == 22
    assert sets[-1].taken_at.hour == 23
    as_of = datetime(2026, 11, 2, 12, tzinfo=UTC)
    shape = {"daily": 0, "weekly": 2, "monthly": 2, **GFS_ONLY}

    berlin = plan_retention(sets, RetentionPolicy(timezone="Europe/Berlin", **shape), as_of)
    assert kept_ids(berlin) == {
        "local-2026-11-02",
        "local-2026-11-01",
        "local-2026-10-31",
    }
    rules = rules_of(berlin)
    assert rules["local-2026-11-02"] == (
        "weekly 2026-W45",
        "monthly 2026-11",
        "newest verified",
    )
    assert rules["local-2026-11-01"] == ("weekly 2026-W44",)
    assert rules["local-2026-10-31"] == ("monthly 2026-10",)

    # In UTC every set falls on the previous date, so the picks shift.
    utc = plan_retention(sets, RetentionPolicy(timezone="UTC", **shape), as_of)
    assert kept_ids(utc) == {"local-2026-11-02", "local-2026-11-01", "local-2026-10-26"}
    assert rules_of(utc)["local-2026-11-01"] == ("monthly 2026-10",)
    assert rules_of(utc)["local-2026-10-26"] == ("weekly 2026-W43",)


def test_month_boundary_uses_policy_calendar() -> None:
    """The last set before local midnight on the 31st is the month's pick."""
    sets = [
        BackupSet("jan-30", datetime(2026, 1, 30, 12, tzinfo=UTC)),
        BackupSet("jan-31-late", datetime(2026, 1, 31, 23, 59, tzinfo=UTC)),
        BackupSet("feb-01", datetime(2026, 2, 1, 0, 0, tzinfo=UTC)),
        BackupSet("feb-02", datetime(2026, 2, 2, 12, tzinfo=UTC)),
    ]
    as_of = datetime(2026, 2, 3, tzinfo=UTC)
    shape = {"daily": 0, "weekly": 0, "monthly": 2, **GFS_ONLY}

    plan = plan_retention(sets, RetentionPolicy(**shape), as_of)
    assert rules_of(plan) == {
        "feb-02": ("monthly 2026-02", "newest verified"),
        "feb-01": (),
        "jan-31-late": ("monthly 2026-01",),
        "jan-30": (),
    }
    # 23:59 UTC on 31 Jan is already 1 Feb in Berlin.
    berlin = plan_retention(sets, RetentionPolicy(timezone="Europe/Berlin", **shape), as_of)
    assert kept_ids(berlin) == {"feb-02", "jan-30"}


def test_iso_week_boundary_spans_new_year() -> None:
    """2026-12-31 and 2027-01-01..03 share ISO week 2026-W53."""
    days = [date(2026, 12, 26) + timedelta(days=i) for i in range(11)]  # ..Jan 5
    sets = [BackupSet(d.isoformat(), at(d)) for d in days]
    as_of = at(date(2027, 1, 6))

    weeks = plan_retention(sets, RetentionPolicy(daily=0, weekly=3, monthly=0, **GFS_ONLY), as_of)
    assert rules_of(weeks)["2027-01-05"] == ("weekly 2027-W01", "newest verified")
    assert rules_of(weeks)["2027-01-03"] == ("weekly 2026-W53",)
    assert rules_of(weeks)["2026-12-27"] == ("weekly 2026-W52",)
    assert kept_ids(weeks) == {"2027-01-05", "2027-01-03", "2026-12-27"}

    # Months split the same week at New Year.
    months = plan_retention(sets, RetentionPolicy(daily=0, weekly=0, monthly=2, **GFS_ONLY), as_of)
    assert kept_ids(months) == {"2027-01-05", "2026-12-31"}


def test_emergency_sets_follow_their_own_keep_period() -> None:
    """Emergency sets live for keep_days (or the default) and skip GFS buckets."""
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    sets = [
        BackupSet(f"sched-05-{d}", datetime(2026, 5, d, 2, tzinfo=UTC)) for d in (29, 30, 31)
    ] + [
        BackupSet("em-within", as_of - timedelta(days=10), "emergency", keep_days=30),
        BackupSet("em-boundary", as_of - timedelta(days=30), "emergency", keep_days=30),
        BackupSet("em-past", as_of - timedelta(days=45), "emergency", keep_days=30),
        BackupSet("em-default-within", as_of - timedelta(days=83), "emergency"),
        BackupSet("em-default-past", as_of - timedelta(days=120), "emergency"),
        # Newer than every scheduled set, but must not take the daily bucket.
        BackupSet("em-latest", datetime(2026, 5, 31, 12, tzinfo=UTC), "emergency", keep_days=0),
        BackupSet(
            "em-failed",
            as_of - timedelta(days=5),
            "emergency",
            status="failed",
            keep_days=30,
        ),
    ]
    policy = RetentionPolicy(daily=3, weekly=0, monthly=0, **GFS_ONLY)
    rules = rules_of(plan_retention(sets, policy, as_of))
    assert rules["em-within"] == ("emergency keep 30d",)
    assert rules["em-boundary"] == ()
    assert rules["em-past"] == ()
    assert rules["em-default-within"] == ("emergency keep 90d",)
    assert rules["em-default-past"] == ()
    assert rules["em-latest"] == ("newest verified",)
    assert rules["em-failed"] == ()  # past the 3d grace; broken sets get grace only
    assert rules["sched-05-31"] == ("daily 2026-05-31",)
    assert rules["sched-05-29"] == ("daily 2026-05-29",)


def test_sets_newer_than_the_run_are_kept() -> None:
    """Sets taken after as_of are kept whatever their status."""
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    sets = [
        BackupSet("old", as_of - timedelta(days=1)),
        BackupSet("future-failed", as_of + timedelta(hours=1), status="failed"),
        BackupSet("future-ok", as_of + timedelta(hours=2)),
    ]
    rules = rules_of(plan_retention(sets, RetentionPolicy(), as_of))
    assert rules["future-failed"] == ("newer than run",)
    assert rules["future-ok"] == ("newer than run",)
    assert "newest verified" in rules["old"]


def test_wrong_prefix_listing_is_refused_even_with_force() -> None:
    """Only incomplete sets (no manifests) means a wrong prefix: never delete."""
    as_of = datetime(2026, 6, 1, tzinfo=UTC)
    sets = [
        BackupSet(f"junk-{i}", as_of - timedelta(days=30 + i), status="incomplete")
        for i in range(3)
    ]
    for force in (False, True):
        plan = plan_retention(sets, RetentionPolicy(), as_of, force=force)
        assert plan.refused is not None
        assert "prefix" in plan.refused
        assert plan.delete == ()
        assert len(plan.would_delete) == 3


def test_mass_deletion_refused_without_force_and_allowed_with_it() -> None:
    """Deleting more than half needs force; exactly half does not."""
    days = [date(2026, 1, d) for d in range(1, 11)]
    sets = [BackupSet(d.isoformat(), at(d)) for d in days]
    as_of = datetime(2026, 1, 11, tzinfo=UTC)
    policy = RetentionPolicy(daily=2, weekly=0, monthly=0, min_verified=1)

    refused = plan_retention(sets, policy, as_of)
    assert refused.refused is not None
    assert "8 of 10" in refused.refused
    assert "trigger with force=true to allow" in refused.refused
    assert refused.delete == ()
    assert len(refused.keep) == 10

    forced = plan_retention(sets, policy, as_of, force=True)
    assert forced.refused is None
    assert forced.forced
    assert len(forced.delete) == 8
    assert {s.backup_id for s in forced.keep} == {"2026-01-10", "2026-01-09"}

    half = RetentionPolicy(daily=5, weekly=0, monthly=0, min_verified=1)
    assert len(plan_retention(sets, half, as_of).delete) == 5


def test_empty_listing_is_a_valid_empty_plan() -> None:
    """No sets: nothing to keep, nothing to delete, no refusal."""
    plan = plan_retention([], RetentionPolicy(), datetime(2026, 1, 1, tzinfo=UTC))
    assert plan.decisions == ()
    assert plan.refused is None
    assert plan.keep == plan.delete == ()
    assert "(no backup sets)" in format_plan_table(plan)
    assert plan_to_json(plan)["counts"]["total"] == 0


def test_naive_datetimes_are_rejected() -> None:
    """Naive taken_at or as_of raise ValueError."""
    naive = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        BackupSet("naive", naive)
    with pytest.raises(ValueError, match="as_of must be a timezone-aware"):
        plan_retention([], RetentionPolicy(), naive)


def test_duplicate_backup_ids_are_rejected() -> None:
    """A listing that names one set twice is an error, not a silent merge."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    sets = [BackupSet("dup", when), BackupSet("dup", when + timedelta(hours=1))]
    with pytest.raises(ValueError, match="'dup' is listed more than once"):
        plan_retention(sets, RetentionPolicy(), when + timedelta(days=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("daily", -1),
        ("weekly", -1),
        ("monthly", -3),
        ("emergency_keep_days", -1),
        ("grace_days", -1),
        ("daily", 1.5),
        ("min_verified", 0),
        ("max_delete_fraction", 0.0),
        ("max_delete_fraction", 1.01),
        ("max_delete_fraction", math.nan),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", ""),
        ("timezone", "Europe"),
    ],
)
def test_bad_policy_values_name_the_field_and_fix(field: str, value: object) -> None:
    """Invalid policy values raise ValueError naming the field and a fix."""
    with pytest.raises(ValueError, match=rf"RetentionPolicy\.{field}") as info:
        RetentionPolicy(**{field: value})  # type: ignore[arg-type]
    assert re.search(r"\b(set|use)\b", str(info.value))


def test_bad_backup_set_values_are_rejected() -> None:
    """Unknown kind/status or negative keep_days raise ValueError."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="kind"):
        BackupSet("x", when, kind="manual")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        BackupSet("x", when, status="ok")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_days"):
        BackupSet("x", when, kind="emergency", keep_days=-1)


def test_format_plan_table_lists_every_set_and_marks_deletions() -> None:
    """Each set id appears on its own row; deleted rows say 'delete'."""
    days = [date(2026, 1, d) for d in range(1, 6)]
    sets = [BackupSet(f"b{d.day}", at(d)) for d in days]
    sets.append(BackupSet("b10-failed", at(date(2025, 12, 1)), status="failed"))
    as_of = datetime(2026, 1, 6, tzinfo=UTC)
    policy = RetentionPolicy(daily=2, weekly=0, monthly=0, min_verified=1)

    plan = plan_retention(sets, policy, as_of, force=True)
    table = format_plan_table(plan)
    lines = table.splitlines()
    assert lines[0].startswith("Retention plan as of 2026-01-06 00:00:00 UTC")
    assert "keep 2, delete 4" in lines[0]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {s.backup_id for s in sets}
    for decision in plan.decisions:
        row = rows[decision.backup.backup_id]
        assert row.rstrip().endswith("delete") != decision.keep
        assert decision.backup.kind in row
        assert decision.backup.status in row
    assert "daily 2026-01-05, newest verified" in rows["b5"]
    assert "2026-01-05 02:00 UTC" in rows["b5"]
    assert all(line == line.rstrip() for line in lines)

    refused = format_plan_table(plan_retention(sets, policy, as_of))
    assert "REFUSED" in refused
    assert "force=true" in refused
    assert "delete (held: plan refused)" in refused


def test_plan_to_json_reports_sets_and_counts() -> None:
    """The JSON report is serialisable and mirrors the plan."""
    as_of = datetime(2026, 1, 6, tzinfo=UTC)
    sets = [
        BackupSet("a", at(date(2026, 1, 5))),
        BackupSet("b", at(date(2026, 1, 4)), status="failed"),
    ]
    report = plan_to_json(plan_retention(sets, RetentionPolicy(), as_of))
    assert json.loads(json.dumps(report)) == report
    assert report["as_of"] == "2026-01-06T00:00:00+00:00"
    assert report["refused"] is None
    assert report["counts"] == {"total": 2, "keep": 2, "delete": 0, "would_delete": 0}
    first = report["sets"][0]
    assert first["backup_id"] == "a"
    assert first["taken_at"] == "2026-01-05T02:00:00+00:00"
    assert first["keep"] is True
    assert first["rules"] == [
        "daily 2026-01-05",
        "weekly 2026-W02",
        "monthly 2026-01",
        "newest verified",
    ]
    assert report["sets"][1]["rules"] == ["grace 3d"]
    assert report["policy"]["timezone"] == "UTC"


def test_emergency_set_taken_without_verify_keeps_its_keep_days() -> None:
    """An emergency set made with verify=false keeps its keep_days; a failed one only grace."""
    as_of = datetime(2026, 6, 30, 12, tzinfo=UTC)
    taken = as_of - timedelta(days=10)
    sets = [
        BackupSet("v", as_of - timedelta(days=1), "scheduled", "verified"),
        BackupSet("e_unverified", taken, "emergency", "unverified", keep_days=30),
        BackupSet("e_failed", taken - timedelta(seconds=1), "emergency", "failed", keep_days=30),
    ]
    plan = plan_retention(sets, RetentionPolicy(), as_of, force=True)
    rules = {d.backup.backup_id: d.rules for d in plan.decisions}
    assert rules["e_unverified"] == ("emergency keep 30d",)
    assert rules["e_failed"] == ()
