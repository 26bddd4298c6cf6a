"""The backup run's last task: store ``verification.json`` once both branches have finished.

The verification restore runs beside compress → encrypt → upload(s). This task waits for both
and writes the record only to the destinations whose upload proved the set's bytes there: a
verification record never describes bytes storage does not hold (a destination whose upload is
cleared later gets it from that upload: ``stages.destinations.catch_up_verification``). A failed
proof is stored as ``failed`` (the set is then listed as failed, never as a good backup), and
the task fails too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pg_backup.core import layout
from pg_backup.core.errors import FollowOnFailure
from pg_backup.core.manifest import Verification
from pg_backup.core.records import UploadResult
from pg_backup.stages.destinations import publish_verification, with_holders
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def staged_verification(rt: Runtime) -> Verification | None:
    """The record the verify stage staged for this run, or None if it staged none."""
    data = rt.staging.read_note(layout.VERIFICATION_OBJECT)
    if data is None:
        return None
    record = Verification.from_bytes(data)
    return record if record.backup_id == rt.run.backup_id else None


def mark_verified(
    rt: Runtime, uploads: Sequence[UploadResult | None], verified: Verification | None
) -> tuple[Verification, list[UploadResult]]:
    """Store the verification record beside the manifest in every destination holding the set.

    :param uploads: each destination's upload result, in config order; None where that upload
        did not succeed in this run (its destination gets the record when its upload is
        cleared and completes: ``stages.destinations.catch_up_verification``)
    :param verified: the verify task's result; None when it did not succeed (then a record it
        staged as failed is stored, if any)
    :returns: the record stored, and the uploads of the destinations that hold it
    :raises FollowOnFailure: no upload proved the set (nothing written), the proof did not
        finish (nothing written), or it found differences (stored as failed); each is the
        consequence of an upstream task's failure, which that task reported
    :raises StorageError: a destination holding the set refused the record
    """
    run = rt.run
    held = [u for u in uploads if u is not None]
    if not held:
        raise FollowOnFailure(
            f"backup {run.backup_id}: no upload finished, so storage does not hold the set: no "
            "verification record is written. Fix the upload's error and clear the upload task"
        )
    record = verified or staged_verification(rt)
    if record is None:
        raise FollowOnFailure(
            f"backup {run.backup_id}: the verification restore did not finish: the set in "
            f"{held[0].location} stays unverified. Fix the restore or verify task's error and "
            "clear it"
        )
    if rt.cfg.multi_destination:
        record = with_holders(record, held)
    publish_verification(rt, record, held)
    if record.status != "verified":
        raise FollowOnFailure(
            f"backup {run.backup_id}: stored as {record.status}: the restore differs from the "
            f"snapshot in {record.mismatches} place(s) (the verify task's log names each)"
        )
    log.info(
        "mark_verified: %s verified, record in %s",
        run.backup_id,
        ", ".join(u.location for u in held),
    )
    return record, held
