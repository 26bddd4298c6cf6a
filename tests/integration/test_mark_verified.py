"""verification.json only for bytes proven in storage: mark_verified waits for upload and verify."""

from __future__ import annotations

import pytest

from pg_backup.core import layout
from pg_backup.core.errors import FollowOnFailure, StorageError
from pg_backup.core.manifest import Verification
from pg_backup.stages.runtime import Runtime
from tests.integration.conftest import objects, task_states
from tests.integration.test_failures import SMALL_SCHEMA


def test_failed_upload_leaves_no_verification_record_and_one_mail(
    harness_factory, smtp_sink, monkeypatch
):
    """Upload fails while the restore proves the dump: no verification.json, no asset event, one mail."""
    import pg_backup.stages.destinations as destinations

    def refuse(*args, **kwargs):
        raise StorageError("storage refused the data object (test fault)")

    monkeypatch.setattr(destinations, "upload_set", refuse)
    h = harness_factory("file", schema=SMALL_SCHEMA)
    smtp_sink.clear()
    run = h.run()
    states = task_states(run)
    assert states["upload"] == "failed", states
    assert states["verify"] == "success", states  # the proof itself ran, beside the upload
    assert states["mark_verified"] in ("failed", "upstream_failed"), states
    assert str(run.state) == "failed"
    found = objects(h.storage())
    assert not [k for k in found if k.endswith(layout.VERIFICATION_OBJECT)], found
    assert not [k for k in found if k.endswith(layout.MANIFEST_OBJECT)], found
    subjects = [str(m["Subject"]) for m in smtp_sink.messages]
    assert len(subjects) == 1 and ".upload " in subjects[0], subjects
    from tests.integration.test_pipeline import asset_events

    assert asset_events(run) == []


def test_mark_verified_writes_nothing_without_the_upload(harness_factory):
    """Given no upload result, mark_verified refuses and storage gets no verification.json."""
    from pg_backup.stages.mark_verified import mark_verified

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    record = Verification(
        backup_id=run.backup_id,
        status="verified",
        checked_at="2026-01-01T00:00:00+00:00",
        relations_checked=1,
        rows_checked=1,
        mismatches=0,
        warnings=0,
        restore_seconds=1.0,
        verify_seconds=1.0,
    )
    with pytest.raises(FollowOnFailure, match="no upload finished"):
        mark_verified(Runtime(cfg, run), [None], record)
    assert not [k for k in objects(h.storage()) if k.endswith(layout.VERIFICATION_OBJECT)]


def test_failed_upload_without_verification_fails_the_run(harness_factory, smtp_sink, monkeypatch):
    """verify=false skips mark_verified: a failed upload still fails the run (check_destinations), with one mail."""
    import pg_backup.stages.destinations as destinations

    def refuse(*args, **kwargs):
        raise StorageError("storage refused the data object (test fault)")

    monkeypatch.setattr(destinations, "upload_set", refuse)
    h = harness_factory("file", schema=SMALL_SCHEMA)
    smtp_sink.clear()
    run = h.run("emergency", conf={"reason": "disk alarm", "verify": False})
    states = task_states(run)
    assert states["upload"] == "failed" and states["mark_verified"] == "skipped", states
    assert states["check_destinations"] == "failed", states
    assert str(run.state) == "failed"
    subjects = [str(m["Subject"]) for m in smtp_sink.messages]
    assert len(subjects) == 1 and ".upload " in subjects[0], subjects


def test_a_note_from_an_earlier_pass_never_stands_for_a_new_dump(harness_factory):
    """A rerun of the dump drops the verification record an earlier pass staged: mark_verified cannot store it for the new bytes."""
    from pg_backup.stages.dump import run_dump

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    rt = Runtime(cfg, run)
    run_dump(rt)
    rt.staging.write_note(layout.VERIFICATION_OBJECT, b'{"stale": true}')
    assert rt.staging.read_note(layout.VERIFICATION_OBJECT) is not None
    run_dump(Runtime(cfg, run))  # the run cleared from its first stage
    assert rt.staging.read_note(layout.VERIFICATION_OBJECT) is None
