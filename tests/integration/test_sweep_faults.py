"""What the sweep must never do: delete what it did not write, count another deployment's sets,
delete a damaged set, stop at one refused delete, or be stopped by a number in a manifest.

Histories are written straight into storage (``fake_sets.py``); the sweep is the real DAG under
``dag.test()`` on moto's S3 server over HTTP (whose bucket policies are enforced: a Deny is a
real 403) or on a directory.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from pg_backup.core import layout
from pg_backup.core.manifest import Manifest
from pg_backup.core.retention import plan_retention
from pg_backup.stages.sweep import policy_of
from tests.integration.conftest import Harness, task_states, xcoms
from tests.integration.fake_sets import daily_history, write_set
from tests.integration.test_sweep import AS_OF, day, keys_of, ours, run_sweep, set_keys


def other_key() -> str:
    from pyrage import x25519

    return str(x25519.Identity.generate().to_public())


def report_of(h: Harness, run: Any) -> dict[str, Any]:
    return json.loads(h.storage().get_bytes(xcoms(run)["report"]))


def rewrite_manifest(store: Any, prefix: str, **changes: Any) -> None:
    """Replace fields of a stored manifest (as another writer, or a hand edit, would)."""
    doc = json.loads(store.get_bytes(prefix + layout.MANIFEST_OBJECT))
    doc.update(changes)
    store.put_bytes(prefix + layout.MANIFEST_OBJECT, json.dumps(doc).encode())


def test_objects_an_operator_put_in_a_set_folder_are_never_deleted(harness_factory):
    """LEGAL_HOLD.txt in an expired set's folder: that set is held whole and reported; the other expired sets go."""
    h = ours(harness_factory("file", schema=""))
    store = h.storage()
    sets = daily_history(store.put_bytes, h.name, day(3, 15), 25)
    held = sets[20]  # Monday 2026-02-23: in no GFS bucket, planned for deletion
    note = held.prefix + "LEGAL_HOLD.txt"
    store.put_bytes(note, b"kept for the auditors until 2027\n")
    stray = f"{h.name}/notes/README.txt"
    store.put_bytes(stray, b"written by a human\n")

    run = run_sweep(h, force=True)

    assert set(task_states(run).values()) == {"success"}, task_states(run)
    remaining = set_keys(store, h.name)
    assert note in remaining and stray in remaining
    assert set(held.keys) <= remaining  # the set itself is kept for a human
    report = report_of(h, run)
    assert sorted(report["plan"]["foreign_objects"]) == sorted([note, stray])
    (hold,) = report["plan"]["held"]
    assert hold["backup_id"] == held.backup_id and "LEGAL_HOLD.txt" in hold["why"]
    deleted = set(report["delete"]["deleted_sets"])
    assert deleted and held.backup_id not in deleted
    assert not set(keys_of(sets, deleted)) & remaining


def test_another_deployments_sets_are_reported_never_counted_nor_deleted(harness_factory):
    """A second deployment on the same prefix and target (other keys): its sets are left alone and our set of each day is the one GFS keeps."""
    h = ours(harness_factory("file", schema=""))
    store = h.storage()
    mine = daily_history(store.put_bytes, h.name, day(3, 15), 20)
    theirs = [write_set(store.put_bytes, h.name, s.taken_at + timedelta(hours=3)) for s in mine]
    stranger = other_key()
    for s in theirs:  # the same shape as ours, encrypted to the other deployment's key
        rewrite_manifest(store, s.prefix, recipients=[stranger])

    run = run_sweep(h, force=True)

    assert set(task_states(run).values()) == {"success"}, task_states(run)
    remaining = set_keys(store, h.name)
    assert keys_of(theirs, {s.backup_id for s in theirs}) <= remaining
    cfg = h.write_config()
    expected = plan_retention([s.backup_set() for s in mine], policy_of(cfg), AS_OF, force=True)
    kept = {d.backup.backup_id: d.rules for d in expected.decisions if d.keep}
    assert any(r.startswith("daily 2026-03-14") for r in kept[mine[1].backup_id])
    assert remaining == keys_of(mine, set(kept)) | keys_of(theirs, {s.backup_id for s in theirs})
    report = report_of(h, run)
    foreign = {f["backup_id"]: f["why"] for f in report["plan"]["foreign_sets"]}
    assert set(foreign) == {s.backup_id for s in theirs}
    assert all("encrypted to keys this deployment does not have" in w for w in foreign.values())
    assert {s["backup_id"] for s in report["plan"]["sets"]} == {s.backup_id for s in mine}


def test_damaged_sets_are_held_and_reported_not_deleted(harness_factory):
    """Expired sets missing tables.json.age or verification.json, truncated, or with an unreadable manifest are all kept and reported."""
    h = ours(harness_factory("file", schema=""))
    store = h.storage()
    sets = daily_history(store.put_bytes, h.name, day(3, 15), 40)
    no_tables, no_verification, truncated, unreadable = sets[30:34]  # beyond every GFS rule
    store.delete(no_tables.prefix + layout.TABLES_OBJECT)
    store.delete(no_verification.prefix + layout.VERIFICATION_OBJECT)
    data = store.get_bytes(truncated.prefix + layout.DATA_OBJECT)
    store.put_bytes(truncated.prefix + layout.DATA_OBJECT, data[:10])
    store.put_bytes(unreadable.prefix + layout.MANIFEST_OBJECT, b'{"format": "pg_backup/9"}')
    before = set_keys(store, h.name)

    run = run_sweep(h, force=True)

    assert set(task_states(run).values()) == {"success"}, task_states(run)
    remaining = set_keys(store, h.name)
    damaged = [no_tables, no_verification, truncated, unreadable]
    removed = {
        no_tables.prefix + layout.TABLES_OBJECT,
        no_verification.prefix + layout.VERIFICATION_OBJECT,
    }
    assert keys_of(damaged, {s.backup_id for s in damaged}) - removed <= remaining
    report = report_of(h, run)
    held = {x["backup_id"]: x["why"] for x in report["plan"]["held"]}
    assert held[no_tables.backup_id] == f"{layout.TABLES_OBJECT} is missing"
    assert held[no_verification.backup_id].startswith("never verified: verification.json")
    assert held[truncated.backup_id] == (
        f"stored {layout.DATA_OBJECT} is 10 bytes, the manifest says {len(data)}"
    )
    (foreign,) = report["plan"]["foreign_sets"]
    assert foreign["backup_id"] == unreadable.backup_id
    assert foreign["why"].startswith("manifest.json cannot be read")
    assert before - remaining  # the sound expired sets did go


def test_a_refused_delete_is_reported_the_sweep_goes_on_stores_its_report_then_fails(
    harness_factory, smtp_sink
):
    """A bucket policy denies DeleteObject for one planned set: the older planned sets are still deleted, the report is stored, the run fails and mails; a retry works from a fresh listing."""
    from pg_backup.stages.runtime import Runtime
    from pg_backup.stages.sweep import delete

    h = ours(harness_factory("s3", schema=""))
    store = h.storage()
    sets = daily_history(store.put_bytes, h.name, day(3, 15), 40)
    cfg = h.write_config()
    expected = plan_retention([s.backup_set() for s in sets], policy_of(cfg), AS_OF, force=True)
    order = [b.backup_id for b in expected.delete]  # newest first
    denied = next(s for s in sets if s.backup_id == order[1])
    bucket = h.storage_url[len("s3://") :].split("/", 1)[0]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:DeleteObject",
                "Resource": f"arn:aws:s3:::{bucket}/backups/{denied.prefix}*",
            }
        ],
    }
    assert h.s3 is not None
    h.s3.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    smtp_sink.clear()

    run = run_sweep(h, force=True)

    states = task_states(run)
    assert states["delete"] == "success" and states["report"] == "failed", states
    remaining = set_keys(store, h.name)
    assert set(denied.keys) <= remaining
    gone = set(order) - {denied.backup_id}
    assert not keys_of(sets, gone) & remaining  # older sets after the refused one went too
    report = json.loads(store.get_bytes(next(o.key for o in store.list(f"{h.name}/sweeps/"))))
    (refused,) = report["delete"]["refused"]
    assert refused.startswith(f"{denied.backup_id} (delete ") and "403" in refused, refused
    assert sorted(report["delete"]["deleted_sets"]) == sorted(gone)
    subjects = [str(m["Subject"]) for m in smtp_sink.messages]
    assert any("FAILED" in s and ".report" in s for s in subjects), subjects

    # A retry (or tomorrow's sweep) lists again: the sets already deleted are "gone", not 404s.
    h.s3.client().delete_bucket_policy(Bucket=bucket)
    planned = xcoms(run)["plan"]
    again = delete(Runtime(cfg), planned, dry_run=False)
    assert sorted(again.gone) == sorted(gone)
    assert again.deleted_sets == [denied.backup_id] and again.refused == []
    assert not set(denied.keys) & set_keys(store, h.name)


def test_keep_days_out_of_range_is_refused_and_no_manifest_number_stops_the_sweep(
    harness_factory,
):
    """keep_days 10000000000 is refused by the trigger form; a manifest holding it (written by anyone) is planned without OverflowError."""
    from airflow.sdk.definitions.param import ParamValidationError

    h = ours(harness_factory("file", schema=""))
    with pytest.raises(ParamValidationError, match="keep_days"):
        h.dag("emergency").test(run_conf={"reason": "before the vote", "keep_days": 10**10})
    store = h.storage()
    daily_history(store.put_bytes, h.name, day(3, 15), 5)
    forever = write_set(store.put_bytes, h.name, day(1, 10, 9), kind="emergency", keep_days=5)
    doc = json.loads(store.get_bytes(forever.prefix + layout.MANIFEST_OBJECT))
    doc["emergency"]["keep_days"] = 10**10
    store.put_bytes(forever.prefix + layout.MANIFEST_OBJECT, json.dumps(doc).encode())
    assert Manifest.from_bytes(store.get_bytes(forever.prefix + layout.MANIFEST_OBJECT)).emergency

    run = run_sweep(h)

    assert set(task_states(run).values()) == {"success"}, task_states(run)
    rules = {s["backup_id"]: s["rules"] for s in xcoms(run)["plan"]["sets"]}
    assert rules[forever.backup_id] == [f"emergency keep {10**10}d"]
    assert set(forever.keys) <= set_keys(store, h.name)
