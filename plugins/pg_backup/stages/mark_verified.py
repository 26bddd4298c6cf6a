"""The backup run's last task: store ``verification.json`` once both branches have finished.

The verification restore runs beside compress → encrypt → upload. This task waits for both and
writes the record only when the upload proved the set's bytes in storage (its result is
given): a verification record never describes bytes storage does not hold. A failed proof is
stored as ``failed`` (the set is then listed as failed, never as a good backup), and the task
fails too.
"""

from __future__ import annotations

import logging

from pg_backup.adapters import catalog_index
from pg_backup.adapters.storage import retain_until
from pg_backup.core import layout
from pg_backup.core.errors import FollowOnFailure
from pg_backup.core.manifest import Verification
from pg_backup.core.records import UploadResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def staged_verification(rt: Runtime) -> Verification | None:
    """The record the verify stage staged for this run, or None if it staged none."""
    path = rt.run.staging_path / layout.VERIFICATION_OBJECT
    try:
        record = Verification.from_bytes(path.read_bytes())
    except FileNotFoundError:
        return None
    return record if record.backup_id == rt.run.backup_id else None


def mark_verified(
    rt: Runtime, uploaded: UploadResult | None, verified: Verification | None
) -> Verification:
    """Store the verification record beside the manifest and refresh the catalog index.

    :param uploaded: the upload's result; None when the upload did not succeed in this run
    :param verified: the verify task's result; None when it did not succeed (then a record it
        staged as failed is stored, if any)
    :raises FollowOnFailure: the upload did not prove the set (nothing written), the proof did
        not finish (nothing written), or it found differences (stored as failed); each is the
        consequence of an upstream task's failure, which that task reported
    """
    run = rt.run
    if uploaded is None:
        raise FollowOnFailure(
            f"backup {run.backup_id}: the upload did not finish, so storage does not hold the "
            "set: no verification record is written. Fix the upload's error and clear the "
            "upload task"
        )
    record = verified or staged_verification(rt)
    if record is None:
        raise FollowOnFailure(
            f"backup {run.backup_id}: the verification restore did not finish: the set in "
            f"{uploaded.location} stays unverified. Fix the restore or verify task's error and "
            "clear it"
        )
    rt.storage.put_bytes(
        run.prefix + layout.VERIFICATION_OBJECT,
        record.to_bytes(),
        retain_until(rt.cfg.storage, run.taken_at),
    )
    catalog_index.record_verification(rt.storage, run.target, record)
    if record.status != "verified":
        raise FollowOnFailure(
            f"backup {run.backup_id}: stored as {record.status}: the restore differs from the "
            f"snapshot in {record.mismatches} place(s) (the verify task's log names each)"
        )
    log.info("mark_verified: %s verified at %s", run.backup_id, uploaded.location)
    return record
