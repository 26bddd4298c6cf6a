"""Tests for pg_backup.core.drill_report: which backups a drill picks, and what its report says."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pg_backup.core.drill_report import (
    build_report,
    choose_backups,
    collect,
    format_report_table,
    report_mail,
    stored_report,
)
from pg_backup.core.errors import DrillError
from pg_backup.core.names import DRILL_PHASES, DrillTask

AT = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)


def cand(day: int, status: str = "verified", kind: str = "scheduled") -> dict[str, str]:
    return {
        "backup_id": f"voting_202611{day:02d}T020000Z_{kind}",
        "taken_at": f"2026-11-{day:02d}T02:00:00+00:00",
        "status": status,
    }


def test_choose_newest_verified_plus_a_seeded_older_one():
    """The newest verified set first, then one older complete set; the seed fixes the pick."""
    sets = [cand(d) for d in range(20, 29)] + [cand(28, "unverified", "emergency")]
    picks = choose_backups(sets, seed=7)
    assert picks[0] == cand(28)["backup_id"]
    assert len(picks) == 2 and picks[1] < picks[0]
    assert choose_backups(list(reversed(sets)), seed=7) == picks  # listing order is irrelevant
    others = {tuple(choose_backups(sets, seed=s)) for s in range(40)}
    assert len(others) > 3  # different seeds pick different older sets


def test_choose_skips_unverified_newest_for_the_first_pick():
    """An unverified newer set is never the 'newest verified' pick, but may be the older one."""
    sets = [cand(27), cand(28, "unverified")]
    assert choose_backups(sets, seed=1) == [cand(27)["backup_id"]]


def test_choose_with_nothing_verified_or_unknown_id_names_the_problem():
    """No verified set, or a backup_id not in storage: DrillError naming it."""
    with pytest.raises(DrillError, match="no verified backup"):
        choose_backups([cand(27, "unverified")], seed=1)
    with pytest.raises(DrillError, match="voting_x is not a complete set"):
        choose_backups([cand(27)], seed=1, backup_id="voting_x")
    assert choose_backups([cand(27), cand(26)], seed=1, backup_id=cand(26)["backup_id"]) == [
        cand(26)["backup_id"]
    ]


def manifest(day: int) -> dict[str, object]:
    c = cand(day)
    return {"kind": "scheduled", "taken_at": c["taken_at"], "data": {"bytes": 1000 + day}}


def phase_outputs(backup: str, seconds: float = 1.0) -> dict[DrillTask, dict[str, object] | None]:
    out: dict[DrillTask, dict[str, object] | None] = {
        p: {backup: {"seconds": seconds}} for p in DRILL_PHASES
    }
    out[DrillTask.VERIFY] = {
        backup: {
            "seconds": seconds,
            "relations": 3,
            "rows": 42,
            "counts_ok": True,
            "differences": [],
            "checks": [{"name": "c", "ok": True, "detail": "no rows"}],
        }
    }
    return out


def test_collect_and_report_pass_when_every_phase_completed():
    """Every phase present, counts exact, checks ok, under the RTO: the report passes."""
    backup = cand(28)["backup_id"]
    chosen = {"backups": [backup], "manifests": {backup: manifest(28)}, "seed": 3}
    drilled = collect(chosen, phase_outputs(backup), AT)
    assert drilled[0].rto_seconds == pytest.approx(5.0)  # five phases of 1 s
    assert drilled[0].age_hours == pytest.approx(26.0)
    doc = build_report("voting", "r1", AT, 3, 60.0, drilled)
    assert doc["outcome"] == "passed" and doc["backups"][0]["ok"]
    subject, body = report_mail(doc, "http://x/run")
    assert "passed" in subject and "voting" in subject
    assert "Problems" not in body


def test_a_missing_phase_or_a_slow_drill_fails_the_report_and_says_why():
    """A phase without output names that phase; over the RTO is reported as such."""
    backup = cand(28)["backup_id"]
    chosen = {"backups": [backup], "manifests": {backup: manifest(28)}, "seed": 3}
    broken = phase_outputs(backup)
    broken[DrillTask.DECRYPT] = None
    doc = build_report("voting", "r1", AT, 3, 60.0, collect(chosen, broken, AT))
    assert doc["outcome"] == "failed"
    assert doc["backups"][0]["error"] == (
        "decrypt did not complete and recorded no cause (killed, or timed out before it could "
        "say): see the decrypt task's log"
    )
    # With the cause the failed step recorded, the line says what went wrong.
    causes = {backup: {"decrypt": "none of the 1 private key(s) given decrypts it\nmore"}}
    doc = build_report("voting", "r1", AT, 3, 60.0, collect(chosen, broken, AT, causes))
    assert doc["backups"][0]["error"] == (
        "decrypt failed: none of the 1 private key(s) given decrypts it"
    )
    subject, body = report_mail(doc, "http://x/run")
    assert subject.endswith(
        f": {backup}: decrypt failed: none of the 1 private key(s) given decrypts it"
    )
    slow = build_report(
        "voting", "r1", AT, 3, 2.0, collect(chosen, phase_outputs(backup, 10.0), AT)
    )
    assert slow["outcome"] == "failed"
    subject, body = report_mail(slow, "http://x/run")
    assert "FAILED" in subject and "over objective" in body
    assert "over RTO" in format_report_table(slow["backups"], 2.0)


def test_report_without_a_choice_fails_with_the_cause():
    """When choose did not complete there is still a report, failed, naming the cause."""
    doc = build_report("voting", "r1", AT, None, 60.0, collect(None, {}, AT), "choose failed")
    assert doc["outcome"] == "failed" and doc["error"] == "choose failed"
    assert "choose failed" in report_mail(doc, "l")[1]


def test_stored_report_names_no_table_but_the_mail_does():
    """The stored report (readable without the key) counts differences; the mail names them."""
    backup = cand(28)["backup_id"]
    chosen = {"backups": [backup], "manifests": {backup: manifest(28)}, "seed": 3}
    outputs = phase_outputs(backup)
    verified = outputs[DrillTask.VERIFY]
    assert verified is not None
    verified[backup].update(
        counts_ok=False,
        differences=['table public."Vote": 6 rows in the snapshot, 5 restored'],
        checks=[{"name": "no orphan votes", "ok": False, "detail": "returned 1 row: (42, 'x')"}],
    )
    doc = build_report("voting", "r1", AT, 3, 60.0, collect(chosen, outputs, AT))
    stored = stored_report(doc)
    raw = json.dumps(stored)
    assert "Vote" not in raw and "(42, 'x')" not in raw
    assert stored["backups"][0]["mismatches"] == 1
    assert stored["backups"][0]["checks"] == [{"name": "no orphan votes", "ok": False}]
    assert stored["outcome"] == "failed" and not stored["backups"][0]["ok"]
    assert doc["backups"][0]["differences"]  # the caller's report is left whole
    _, body = report_mail(doc, "http://x/run")
    assert "Vote" in body and "(42, &#x27;x&#x27;)" in body
    assert "DIFF" in format_report_table(doc["backups"], 60.0)
