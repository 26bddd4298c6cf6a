"""The planner against what a manifest written by anyone may say, and against damaged sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pg_backup.core.retention import RULE_HELD, BackupSet, RetentionPolicy, plan_retention

AS_OF = datetime(2026, 11, 30, 4, 30, tzinfo=UTC)


def daily(days: int) -> list[BackupSet]:
    """One verified scheduled set per day, the newest yesterday at 02:00."""
    first = AS_OF.replace(hour=2, minute=0) - timedelta(days=1)
    return [
        BackupSet(f"v_{i:03d}", first - timedelta(days=i), "scheduled", "verified")
        for i in range(days)
    ]


@settings(max_examples=200, deadline=None)
@given(
    keep_days=st.integers(min_value=0, max_value=10**30),
    age_days=st.integers(min_value=0, max_value=365 * 200),
)
def test_any_keep_days_a_manifest_holds_plans_without_overflow(keep_days: int, age_days: int):
    """keep_days of any size (10**10 reached every sweep as OverflowError) keeps the set exactly as long."""
    taken = AS_OF - timedelta(days=age_days, hours=1)
    emergency = BackupSet("e_1", taken, "emergency", "verified", keep_days)
    plan = plan_retention([*daily(3), emergency], RetentionPolicy(), AS_OF, force=True)
    decision = next(d for d in plan.decisions if d.backup.backup_id == "e_1")
    kept_by_keep_days = any(r.startswith("emergency keep") for r in decision.rules)
    assert kept_by_keep_days == (age_days + 1 / 24 < keep_days)


def test_a_held_set_is_kept_and_never_counts_as_verified():
    """A damaged newest set is held for a human; the newest sound set keeps the newest-verified rule."""
    sets = daily(10)
    damaged = BackupSet(
        "v_new", AS_OF - timedelta(hours=2), "scheduled", "verified", hold="stored size differs"
    )
    plan = plan_retention([*sets, damaged], RetentionPolicy(daily=3), AS_OF, force=True)
    rules = {d.backup.backup_id: d.rules for d in plan.decisions}
    assert rules["v_new"] == (f"{RULE_HELD}: stored size differs",)
    assert "newest verified" in rules["v_000"]
    assert any(r.startswith("daily") for r in rules["v_002"])  # the three newest sound days
    assert "v_new" not in {b.backup_id for b in plan.delete}
