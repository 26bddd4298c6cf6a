"""The catalog index as pure logic: built from manifests, changed by events, judged for staleness."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pg_backup.core import catalog_index as ci
from pg_backup.core import layout
from pg_backup.core.manifest import Emergency, Manifest, ObjectEntry, Verification
from pg_backup.core.retention import RetentionPolicy, plan_retention, plan_to_json

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SHA = "ab" * 32
LOCATION = "s3://pg-backups/voting/"


def manifest(taken: datetime, kind: str = "scheduled", reason: str | None = None) -> Manifest:
    backup = layout.backup_id("voting", taken, kind)  # type: ignore[arg-type]
    prefix = layout.set_prefix("voting", backup)
    return Manifest(
        backup_id=backup,
        target="voting",
        kind=kind,  # type: ignore[arg-type]
        dag_id=f"pg_backup_{'emergency_' if kind == 'emergency' else ''}voting",
        run_id=f"manual__{taken.isoformat()}",
        taken_at=taken.isoformat(),
        snapshot_at=taken.isoformat(),
        server_version="16.4",
        pg_dump_version="16.4",
        package_version="0.1.0",
        compression="zstd-3",
        recipients=["age1example"],
        dump_bytes=3000,
        data=ObjectEntry(key=prefix + layout.DATA_OBJECT, bytes=1000, sha256=SHA),
        tables=ObjectEntry(key=prefix + layout.TABLES_OBJECT, bytes=24, sha256=SHA),
        emergency=Emergency(reason=reason, keep_days=30, triggered_by="admin") if reason else None,
    )


def verification(backup: str, status: str = "verified") -> Verification:
    return Verification(
        backup_id=backup,
        status=status,  # type: ignore[arg-type]
        checked_at=NOW.isoformat(),
        relations_checked=9,
        rows_checked=5513,
        mismatches=0 if status == "verified" else 2,
        warnings=0,
        restore_seconds=1.5,
        verify_seconds=0.25,
    )


def entry(taken: datetime, status: str | None = "verified", **kw) -> ci.SetEntry:
    m = manifest(taken, **kw)
    return ci.entry_from_manifest(
        m, LOCATION + m.backup_id + "/", verification(m.backup_id, status) if status else None
    )


def day(n: int, hour: int = 2) -> datetime:
    return datetime(2026, 11, n, hour, tzinfo=UTC)


def drill_report(when: datetime, backups: list[dict], outcome: str = "passed") -> dict:
    return {
        "target": "voting",
        "run_id": f"scheduled__{when.isoformat()}",
        "drilled_at": when.isoformat(),
        "seed": 1,
        "rto_objective_seconds": 1800.0,
        "outcome": outcome,
        "error": None,
        "backups": backups,
    }


def drilled(backup: str, **over) -> dict:
    item = {
        "backup_id": backup,
        "ok": True,
        "counts_ok": True,
        "rto_seconds": 12.0,
        "checks": [{"name": "c", "ok": True, "detail": ""}],
        "differences": [],
        "error": None,
    }
    item.update(over)
    return item


def test_entry_shows_what_the_manifest_may_show_and_no_row_count():
    """Kind, reason, sizes, hash, versions and the proof; the verified row total stays out."""
    e = entry(day(28), kind="emergency", reason="before the migration")
    assert (e.kind, e.reason, e.keep_days, e.triggered_by) == (
        "emergency",
        "before the migration",
        30,
        "admin",
    )
    assert (e.dump_bytes, e.stored_bytes, e.data_sha256) == (3000, 1024, SHA)
    assert e.status == "verified" and e.verification and e.verification.proof == ["counts"]
    assert e.destinations[0].location.startswith(LOCATION)
    text = json.dumps(e.model_dump(mode="json"))
    assert "5513" not in text and "rows" not in text


def test_upload_then_verification_then_failed_rerun():
    """An upload lists the set unverified; its verification proves it; a rerun starts over."""
    m = manifest(day(29))
    index = ci.with_set(ci.empty("voting", NOW), ci.entry_from_manifest(m, LOCATION), NOW)
    assert [(s.backup_id, s.status) for s in index.sets] == [(m.backup_id, "unverified")]
    index = ci.with_verification(index, verification(m.backup_id), NOW)
    assert index is not None and index.sets[0].status == "verified"
    failed = ci.with_verification(index, verification(m.backup_id, "failed"), NOW)
    assert failed is not None and failed.sets[0].status == "failed"
    assert failed.sets[0].verification and failed.sets[0].verification.proof == []
    rerun = ci.with_set(failed, ci.entry_from_manifest(m, LOCATION), NOW)
    assert rerun.sets[0].status == "unverified" and rerun.sets[0].verification is None


def test_verification_of_an_unlisted_set_asks_for_a_rebuild():
    """The index cannot invent a set from its verification alone: None means rebuild."""
    assert ci.with_verification(ci.empty("voting", NOW), verification("voting_x"), NOW) is None


def test_drill_outcomes_per_set_without_table_names():
    """Passed, counts differ, a failed check, over RTO, a phase that died: a category each."""
    sets = [entry(day(d)) for d in (25, 26, 27, 28, 29)]
    index = ci.empty("voting", NOW).model_copy(update={"sets": sets})
    report = drill_report(
        day(30, 4),
        [
            drilled(sets[0].backup_id),
            drilled(sets[1].backup_id, ok=False, counts_ok=False, differences=['"Vote": 3 != 4']),
            drilled(
                sets[2].backup_id, ok=False, checks=[{"name": "x", "ok": False, "detail": "y"}]
            ),
            drilled(sets[3].backup_id, rto_seconds=4000.0),
            drilled(
                sets[4].backup_id,
                ok=False,
                counts_ok=False,
                error="restore did not complete: see the restore task's log",
            ),
        ],
        outcome="failed",
    )
    index = ci.with_drill(index, report, "pg_restore_drill_voting", NOW)
    got = {s.backup_id: (s.drill.outcome, s.drill.problem) for s in index.sets if s.drill}
    assert got == {
        sets[0].backup_id: ("passed", None),
        sets[1].backup_id: ("failed", "row counts differ"),
        sets[2].backup_id: ("failed", "1 of 1 checks failed"),
        sets[3].backup_id: ("failed", "over RTO (4000 s > 1800 s)"),
        sets[4].backup_id: ("failed", "restore did not complete"),
    }
    assert "Vote" not in index.to_bytes().decode()
    assert [d.outcome for d in index.drills] == ["failed"]
    broken = {**drill_report(day(30, 5), [], "failed"), "error": "choose did not complete: x"}
    assert ci.with_drill(index, broken, "d", NOW).drills[0].error == "choose did not complete"


def test_an_older_drill_report_does_not_override_a_newer_one():
    """Reports may arrive in any order; each set keeps its newest drill, the list stays capped."""
    e = entry(day(20))
    index = ci.empty("voting", NOW).model_copy(update={"sets": [e]})
    newer = drill_report(day(29), [drilled(e.backup_id)])
    older = drill_report(day(22), [drilled(e.backup_id, ok=False, counts_ok=False)], "failed")
    index = ci.with_drill(ci.with_drill(index, newer, "d", NOW), older, "d", NOW)
    assert index.sets[0].drill and index.sets[0].drill.outcome == "passed"
    assert [d.drilled_at for d in index.drills] == [newer["drilled_at"], older["drilled_at"]]
    for n in range(ci.DRILLS_KEPT + 5):
        index = ci.with_drill(index, drill_report(day(1) + timedelta(hours=n), []), "d", NOW)
    assert len(index.drills) == ci.DRILLS_KEPT
    assert index.drills[0].drilled_at == newer["drilled_at"]


def sweep_report(sets: list[ci.SetEntry], as_of: datetime, dry_run: bool = False) -> dict:
    from pg_backup.core.retention import BackupSet

    plan = plan_retention(
        [
            BackupSet(s.backup_id, s.taken, s.kind, s.status, s.keep_days)  # type: ignore[arg-type]
            for s in sets
        ],
        RetentionPolicy(daily=2, weekly=1, monthly=1, min_verified=1, max_delete_fraction=1),
        as_of,
    )
    doomed = [d.backup.backup_id for d in plan.decisions if not d.keep]
    return {
        "run_id": f"scheduled__{as_of.isoformat()}",
        "plan": plan_to_json(plan),
        "delete": {
            "deleted_sets": [] if dry_run else doomed,
            "deleted_objects": 0,
            "locked": [],
            "dry_run": dry_run,
        },
        "housekeeping": {},
    }


def test_sweep_fates_expiry_and_deleted_sets():
    """Each set gets its rules and a lapse date; deleted sets leave; a dry run deletes none."""
    sets = [entry(day(d)) for d in (10, 26, 27, 28, 29)] + [
        entry(day(28, 9), kind="emergency", reason="migration")
    ]
    index = ci.empty("voting", NOW).model_copy(update={"sets": ci._sorted(sets)})
    report = sweep_report(sets, day(30, 4))
    swept = ci.with_sweep(index, report, NOW)
    fates = {s.backup_id: s.retention for s in swept.sets}
    newest = sets[4].backup_id
    assert fates[newest] and fates[newest].keep
    assert fates[newest].rules == [
        "daily 2026-11-29",
        "weekly 2026-W48",
        "monthly 2026-11",
        "newest verified",
    ]
    assert (fates[newest].expires_on, fates[newest].expires_exact) == ("2026-12-01", False)
    emergency = fates[sets[5].backup_id]
    assert emergency and (emergency.expires_on, emergency.expires_exact) == ("2026-12-28", True)
    deleted = {s.backup_id for s in sets} - set(fates)
    assert deleted == set(report["delete"]["deleted_sets"]) and deleted
    assert swept.sweep and swept.sweep.deleted == sorted(deleted)
    dry = ci.with_sweep(index, sweep_report(sets, day(30, 4), dry_run=True), NOW)
    assert len(dry.sets) == len(sets)
    assert any(s.retention and not s.retention.keep and s.retention.dry_run for s in dry.sets)


def test_expiry_dates_of_each_rule():
    """Daily/weekly/monthly give a 'not before' date; emergency and grace an exact one."""
    taken = datetime(2026, 11, 28, 2, tzinfo=UTC)
    policy = {"daily": 7, "weekly": 4, "monthly": 12}
    assert ci.expiry(["daily 2026-11-28"], taken, policy) == (date(2026, 12, 5), False)
    assert ci.expiry(["weekly 2026-W48"], taken, policy) == (date(2026, 12, 21), False)
    assert ci.expiry(["monthly 2026-11"], taken, policy) == (date(2027, 11, 1), False)
    assert ci.expiry(["emergency keep 90d"], taken, policy) == (date(2027, 2, 26), True)
    assert ci.expiry(["grace 3d"], taken, policy) == (date(2026, 12, 1), True)
    both = ["daily 2026-11-28", "monthly 2026-11", "newest verified"]
    assert ci.expiry(both, taken, policy) == (date(2027, 11, 1), False)


def test_rebuilt_is_the_same_whatever_order_reports_come_in():
    """Listing order and report order do not change a rebuilt index."""
    sets = [entry(day(d)) for d in (26, 27, 28)]
    reports = [
        (drill_report(day(28, 5), [drilled(sets[0].backup_id)]), "d"),
        (drill_report(day(29, 5), [drilled(sets[0].backup_id, ok=False, counts_ok=False)]), "d"),
    ]
    swept = sweep_report(sets, day(30), dry_run=True)
    a = ci.rebuilt("voting", sets, reports, swept, NOW)
    b = ci.rebuilt("voting", reversed(sets), list(reversed(reports)), swept, NOW)
    assert a == b
    assert [s.backup_id for s in a.sets] == [s.backup_id for s in reversed(sets)]
    assert a.get(sets[0].backup_id).drill.outcome == "failed"  # type: ignore[union-attr]
    assert a.built_at == NOW.isoformat()


def test_needs_rebuild_when_missing_foreign_or_stale():
    """Missing, another target's, or older than REBUILD_AFTER: rebuild; otherwise update."""
    fresh = ci.empty("voting", NOW)
    assert ci.needs_rebuild(None, "voting", NOW)
    assert ci.needs_rebuild(fresh, "other", NOW)
    assert ci.needs_rebuild(fresh, "voting", NOW + ci.REBUILD_AFTER + timedelta(seconds=1))
    assert ci.needs_rebuild(fresh, "voting", NOW + ci.REBUILD_AFTER) is None


def test_index_round_trips_and_ignores_fields_of_newer_releases():
    """Stable JSON in and out; an unknown field (a later release) does not break reading."""
    index = ci.with_set(ci.empty("voting", NOW), entry(day(29)), NOW)
    assert ci.CatalogIndex.from_bytes(index.to_bytes()) == index
    doc = json.loads(index.to_bytes())
    doc["sets"][0]["destinations"].append(
        {"name": "offsite", "location": "s3://b2/", "stored_bytes": 1, "replicated_at": "x"}
    )
    doc["future"] = True
    again = ci.CatalogIndex.from_bytes(json.dumps(doc).encode())
    assert [d.name for d in again.sets[0].destinations] == ["primary", "offsite"]


def test_freshness_colours():
    """Green within the limit less one SLA, amber in the last SLA window, red past the limit."""
    sla, limit = timedelta(hours=2), timedelta(hours=26)
    assert ci.freshness(None, sla, limit) == "none"
    assert ci.freshness(timedelta(hours=23), sla, limit) == "ok"
    assert ci.freshness(timedelta(hours=25), sla, limit) == "due"
    assert ci.freshness(timedelta(hours=27), sla, limit) == "stale"


def test_metric_values_follow_the_index():
    """Newest verified and newest drilled sets, last drill, sizes and counts by status."""
    old, new = entry(day(27)), entry(day(29))
    failed = entry(day(30, 2), status="failed")
    index = ci.empty("voting", NOW).model_copy(update={"sets": ci._sorted([old, new, failed])})
    index = ci.with_drill(index, drill_report(day(29, 6), [drilled(old.backup_id)]), "d", NOW)
    values = {(n, tuple(labels.values())): v for n, labels, v in ci.metric_values(index, NOW)}
    assert values[("newest_verified_age_seconds", ())] == (NOW - day(29)).total_seconds()
    assert values[("newest_verified_timestamp_seconds", ())] == day(29).timestamp()
    assert values[("newest_drilled_age_seconds", ())] == (NOW - day(27)).total_seconds()
    assert values[("last_drill_passed", ())] == 1.0
    assert values[("stored_bytes", ())] == 3 * 1024
    assert values[("sets", ("verified",))] == 2 and values[("sets", ("failed",))] == 1
    empty = {n for n, _, _ in ci.metric_values(ci.empty("voting", NOW), NOW)}
    assert "newest_verified_age_seconds" not in empty and "sets" in empty


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(8))))
def test_changes_commute_so_a_retried_writer_loses_nothing(order):
    """Uploads and verifications of distinct sets, applied in any order, give one index."""
    sets = [manifest(day(1) + timedelta(hours=i)) for i in range(4)]
    events = [("set", m) for m in sets] + [("verify", m) for m in sets]
    index = ci.empty("voting", NOW)
    pending = [events[i] for i in order]
    while pending:  # a verification before its upload waits, as a writer would retry it
        kind, m = pending.pop(0)
        if kind == "set":
            index = ci.with_set(index, ci.entry_from_manifest(m, LOCATION), NOW)
            continue
        changed = ci.with_verification(index, verification(m.backup_id), NOW)
        if changed is None:
            pending.append((kind, m))
        else:
            index = changed
    assert [(s.backup_id, s.status) for s in index.sets] == [
        (m.backup_id, "verified") for m in reversed(sets)
    ]


def test_proof_lists_what_the_verification_proved():
    """The index says what verification.json proved; records older than ``proven``: counts."""
    m = manifest(datetime(2026, 11, 3, 2, 0, tzinfo=UTC))
    full = verification(m.backup_id).model_copy(update={"proven": ["counts", "content", "objects"]})
    assert ci.verification_entry(full).proof == ["counts", "content", "objects"]
    assert ci.verification_entry(verification(m.backup_id)).proof == ["counts"]
    assert ci.verification_entry(verification(m.backup_id, "failed")).proof == []
