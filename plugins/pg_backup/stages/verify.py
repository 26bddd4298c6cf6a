"""The verify stage: the restored database holds exactly the snapshot's rows, content and objects.

Every relation's row count and content fingerprint (``core.fingerprint``), every object of the
inventory and every sequence value are compared with what the dump recorded in its snapshot
(``core.proof``). Stages the record ``verification.json`` whatever the outcome (what was proven
and what was skipped and why, in numbers), then fails on any difference, naming each relation
and object in a table (the log and the failure mail).

The restore and this proof run beside compress, encrypt and upload. The record reaches storage
only through ``mark_verified`` (``stages.mark_verified``), once the upload has proven the set's
bytes in storage: a verification record never describes bytes storage does not hold.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.counts import (
    TableCount,
    compare_counts,
    counts_from_json,
    list_relations,
    measure,
    measure_large_objects,
)
from pg_backup.core.errors import VerificationFailed
from pg_backup.core.fingerprint import ALGORITHM, PROBE_SQL, session_options
from pg_backup.core.inventory import compare_inventories, sequence_values, take_inventory
from pg_backup.core.manifest import Skipped, Verification
from pg_backup.core.proof import Proof
from pg_backup.core.records import DumpResult, RestoreResult, UploadResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def prove_database(target: PgEndpoint, doc: dict[str, Any], cfg: TargetConfig) -> Proof:
    """Measure a restored database and compare it with the dump's table document.

    :param doc: the decrypted ``tables.json`` of the set (any release's)
    """
    from psycopg import errors

    expected = counts_from_json(doc)
    schemas, exclude = cfg.dump.schemas, cfg.dump.exclude_schemas
    recorded = doc.get("fingerprint") or {}
    with (
        target.connect(autocommit=True, options=session_options()) as conn,
        conn.cursor() as cur,
    ):
        note = _content_note(cur, recorded)
        fingerprint = note is None
        restored: list[TableCount] = []
        hidden: list[tuple[str, str]] = []
        for relation in list_relations(cur, schemas, exclude):
            try:
                restored.append(measure(cur, relation, fingerprint)[0])
            except errors.InsufficientPrivilege as exc:
                hidden.append((relation.label, _hidden_reason(str(exc), target.user)))
        try:
            restored.append(measure_large_objects(cur, fingerprint))
        except errors.InsufficientPrivilege:
            restored.append(measure_large_objects(cur, False))
        objects = None
        if "inventory" in doc:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cur.fetchone()
            sequences = doc.get("sequences") or {}
            objects = compare_inventories(
                doc["inventory"],
                take_inventory(cur, schemas, exclude),
                (sequences.get("before", {}), sequences.get("after", {})),
                sequence_values(cur, schemas, exclude),
                superuser=bool(row and row[0]),
            )
    unreadable = {label for label, _ in hidden}
    rows = compare_counts(
        [c for c in expected if c.label not in unreadable],
        [c for c in restored if c.label not in unreadable],
    )
    return Proof(rows, objects, note, hidden, target.user)


def _content_note(cur: Any, recorded: dict[str, Any]) -> str | None:
    """Why no fingerprint can be compared with this set on this server, or None."""
    if not recorded:
        return "set written before content fingerprints"
    if recorded.get("algorithm") != ALGORITHM:
        return f"fingerprints of another kind ({recorded.get('algorithm')!r})"
    cur.execute(PROBE_SQL)
    row = cur.fetchone()
    if row is None or row[0] != recorded.get("probe"):
        return "the restoring server hashes text differently (another byte order)"
    return None


def _hidden_reason(message: str, user: str) -> str:
    if "row-level security" in message:
        return (
            f"row-level security hides its rows from the restoring login {user!r} (FORCE ROW "
            "LEVEL SECURITY): give that login BYPASSRLS to prove it"
        )
    return f"the restoring login {user!r} may not read it"


def log_proof(proof: Proof, what: str) -> None:
    """Warnings and skipped objects by name in the task's log (the caller logs the outcome)."""
    for line in proof.notes():
        log.warning("%s: %s", what, line)


def verify_restore(rt: Runtime, dumped: DumpResult, restored: RestoreResult) -> Verification:
    """Prove the scratch database against the snapshot; stage the record as verification.json.

    Storing it beside the manifest is ``mark_verified``'s, once the upload proved the set is in
    storage: a verification record never describes bytes storage does not hold.

    :raises VerificationFailed: a relation or object differs (the record is staged first, as
        failed, for ``mark_verified`` to store); the message is the table of differences
    """
    cfg, run = rt.cfg, rt.run
    started = time.monotonic()
    rt.staging.drop_note(layout.VERIFICATION_OBJECT)  # an earlier try's never stands for this
    doc = json.loads(rt.staging.read_small(dumped.tables))
    target = rt.scratch_databases.endpoint(restored.database)
    proof = prove_database(target, doc, cfg)
    record = Verification(
        backup_id=run.backup_id,
        status="verified" if proof.ok else "failed",
        checked_at=datetime.now(UTC).isoformat(),
        relations_checked=proof.rows.checked,
        rows_checked=proof.rows.rows,
        mismatches=len(proof.rows.differences)
        + (len(proof.objects.differences) if proof.objects else 0),
        warnings=len(proof.rows.warnings) + (len(proof.objects.warnings) if proof.objects else 0),
        restore_seconds=round(restored.seconds, 3),
        verify_seconds=round(time.monotonic() - started, 3),
        proven=proof.proven,
        content_checked=proof.rows.content_checked,
        objects_checked=proof.objects.checked if proof.objects else None,
        sequences_checked=proof.objects.sequences_checked if proof.objects else None,
        partition_roots=len(proof.rows.roots),
        skipped=[Skipped(**item) for item in proof.skipped()],
    )
    rt.staging.write_note(layout.VERIFICATION_OBJECT, record.to_bytes())
    log_proof(proof, "verify")
    if not proof.ok:
        raise VerificationFailed(
            f"backup {run.backup_id}: the restore differs from the snapshot in "
            f"{record.mismatches} place(s):\n" + proof.report()
        )
    log.info("verify done: %s, %.1f s", proof.summary(), record.verify_seconds)
    return record


def asset_event(rt: Runtime, uploaded: UploadResult, record: Verification) -> dict[str, Any]:
    """The extra of the backup asset's event: the Assets view is the backup history."""
    return {
        "backup_id": rt.run.backup_id,
        "kind": rt.run.kind,
        "bytes": uploaded.data_bytes,
        "location": uploaded.location,
        "verification": record.status,
        "rows": record.rows_checked,
        "proven": record.proven,
        # Targets with several destinations: which of them hold the set.
        **({"destinations": record.held_by} if record.held_by is not None else {}),
    }
