"""Several destinations (3-2-1): the verification record goes to every one that holds the set.

The set is verified once (the restore reads staging, not a destination); the record of that
proof is then written beside the manifest in each destination whose upload completed. An
upload that completes later (a retry, or a task cleared once its store is back) writes the
same record there itself, so every copy ends up vouched for without a second restore.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pg_backup.adapters import catalog_index
from pg_backup.adapters.storage import Storage, open_storage, retain_until
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import PgBackupError, SetUnavailable, StorageError
from pg_backup.core.manifest import Emergency, SourceIdentity, Verification
from pg_backup.core.names import upload_task_id
from pg_backup.core.records import DumpResult, EncryptResult, UploadResult
from pg_backup.stages.runtime import Runtime
from pg_backup.stages.upload import upload_set

log = logging.getLogger(__name__)


def with_holders(record: Verification, uploads: Sequence[UploadResult]) -> Verification:
    """The record naming the destinations that hold the set (targets with several only)."""
    names = [u.destination for u in uploads]
    return record.model_copy(update={"held_by": names})


def publish_verification(
    rt: Runtime, record: Verification, uploads: Sequence[UploadResult]
) -> list[str]:
    """Write ``verification.json`` (and the catalog entry) to every destination that holds the set.

    :param uploads: the completed uploads of the set
    :returns: the names of the destinations written to
    :raises StorageError: a destination refused the record (after trying every one: the
        message names each that failed)
    """
    run = rt.run
    names = [u.destination for u in uploads]
    written: list[str] = []
    failed: list[str] = []
    for name in names:
        dest = rt.at(name)
        try:
            dest.storage.put_bytes(
                run.prefix + layout.VERIFICATION_OBJECT,
                record.to_bytes(),
                retain_until(dest.cfg.storage, run.taken_at),
            )
        except PgBackupError as exc:
            failed.append(f"{name}: {exc}")
            continue
        catalog_index.record_verification(dest.storage, run.target, record)
        written.append(name)
    if failed:
        raise StorageError(
            f"set {run.backup_id}: verification.json could not be written to "
            + "; ".join(failed)
            + ". The proof itself stands: retry this task once the destination answers"
        )
    if len(names) > 1:
        log.info("verification record of %s written to %s", run.backup_id, ", ".join(written))
    return written


def catch_up_verification(rt: Runtime, uploaded: UploadResult, record: Verification | None) -> bool:
    """After a late upload: write the set's verification record there too, if it was verified.

    :param rt: the runtime of the destination just uploaded to (``Runtime.at``)
    :param record: the record mark_verified stored in the other destinations (None: it has
        not run yet, and will write it to this destination itself; or the proof failed)
    :returns: whether a record was written
    """
    if record is None or record.backup_id != rt.run.backup_id:
        return False
    held = [*(record.held_by or []), uploaded.destination]
    held = list(dict.fromkeys(held))
    publish_verification(rt, record.model_copy(update={"held_by": held}), [uploaded])
    log.info(
        "upload: set %s was verified before this upload completed: its verification record "
        "is now in %s too",
        rt.run.backup_id,
        uploaded.destination,
    )
    return True


def upload_to(
    rt: Runtime,
    destination: str,
    dumped: DumpResult,
    encrypted: EncryptResult,
    emergency: Emergency | None = None,
    source: SourceIdentity | None = None,
    verified: Verification | None = None,
) -> UploadResult:
    """The upload task of one destination: upload and prove the set there (``upload_set``).

    With several destinations the manifest names them all; and when the set was verified
    before this upload completed (its task was retried or cleared after the store came back),
    the verification record is written here too. A target with one storage uploads exactly
    as it always did.

    :param verified: the record mark_verified stored in this run, if it has run
    :raises StagedFileError: a staged file needed is gone or changed (storage untouched)
    :raises StorageError: the destination refused, or holds other bytes than were sent
    """
    dest = rt.at(destination)
    multi = rt.cfg.multi_destination
    names = [d.name for d in rt.cfg.destinations] if multi else None
    result = upload_set(
        dest, dumped, encrypted, emergency=emergency, source=source, destinations=names
    )
    if multi:
        catch_up_verification(dest, result, verified)
    return result


def check_held(rt: Runtime, uploads: dict[str, Any]) -> list[str]:
    """Every destination holds the set, or fail naming those that do not.

    :param uploads: destination name -> its upload task's result (None: that task failed)
    :returns: the destinations that hold the set
    :raises StorageError: naming each destination without the set, its task and the fix
    """
    held = [name for name, result in uploads.items() if result]
    missing = [name for name, result in uploads.items() if not result]
    if missing:
        tasks = ", ".join(upload_task_id(name, rt.cfg.multi_destination) for name in missing)
        raise StorageError(
            f"set {rt.run.backup_id} is not in destination(s) {', '.join(missing)} (task "
            f"{tasks} failed; held by: {', '.join(held) or 'none'}). Once the destination "
            f"answers, clear {tasks}: the upload completes the set there, with its "
            "verification record"
        )
    return held


T = TypeVar("T")


def from_destinations(
    cfg: TargetConfig,
    backup_id: str,
    attempt: Callable[[Storage], T],
    from_name: str | None = None,
    say: Callable[[str], None] = log.info,
) -> tuple[str, T]:
    """Run ``attempt`` on the first destination that can give the set back; fall back in order.

    A destination that cannot be reached, holds no complete set, or gives an object that
    fails its hash (``StorageError``, ``SetUnavailable``) is skipped with one line saying so;
    any other error (a wrong key, a refused restore) is raised at once.

    :param from_name: only this destination (``--from``), no fallback
    :returns: (the destination used, what ``attempt`` returned)
    :raises ConfigError: no such destination
    :raises StorageError | SetUnavailable: every destination tried failed (the last one's
        error; the lines said before name each)
    """
    names = [cfg.destination(from_name).name] if from_name else [d.name for d in cfg.destinations]
    for index, name in enumerate(names):
        store = open_storage(cfg.destination(name))
        try:
            result = attempt(store)
        except (StorageError, SetUnavailable) as exc:
            if index + 1 == len(names):
                raise
            say(
                f"fallback  destination {name} cannot give {backup_id} back ({exc.summary}): "
                f"trying {names[index + 1]}"
            )
            continue
        return name, result
    raise AssertionError("unreachable: a target has at least one destination")
