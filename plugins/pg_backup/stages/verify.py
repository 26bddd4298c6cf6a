"""The verify stage: the restored database holds exactly the snapshot's rows, content and objects.

Every relation's row count and content fingerprint (``core.fingerprint``), every object of the
inventory and every sequence value are compared with what the dump recorded in its snapshot
(``core.proof``). Stages the record ``verification.json`` whatever the outcome (what was proven
and what was skipped and why, in numbers), then fails on any difference, naming each relation
and object in a table (the log and the failure mail).

Tables the restore stage already read while pg_restore built indexes and keys
(``read_tables``, staged as a note) are taken from that note, not scanned again, when they are
still the same storage of the same database; the rest (materialized views, partitions read
through their root, large objects, the inventory, sequences) is read here.

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
    MeasuredTable,
    TableCount,
    TablesRead,
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


def _database_oid(cur: Any) -> int:
    """The oid of the connected database: a dropped and recreated one has another."""
    cur.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def read_tables(target: PgEndpoint, doc: dict[str, Any], cfg: TargetConfig) -> TablesRead:
    """Count and fingerprint every table of a restored database (not materialized views).

    The restore stage calls it while pg_restore builds indexes and keys (they change no row:
    ``adapters.pg_restore.plan_post_data``), so the proof need not scan the tables after.
    A table the login may not read is left out: the proof reads it and says why.

    :param doc: the set's ``tables.json`` (for the kind of fingerprint it recorded)
    """
    from psycopg import errors

    started = time.monotonic()
    schemas, exclude = cfg.dump.schemas, cfg.dump.exclude_schemas
    with (
        target.connect(autocommit=True, options=session_options()) as conn,
        conn.cursor() as cur,
    ):
        fingerprint = _content_note(cur, doc.get("fingerprint") or {}) is None
        database_oid = _database_oid(cur)
        tables: list[MeasuredTable] = []
        for relation in list_relations(cur, schemas, exclude):
            if relation.kind != "table":
                continue
            try:
                count, filenode = measure(cur, relation, fingerprint, check_storage=True)
            except errors.InsufficientPrivilege:
                continue
            tables.append(
                MeasuredTable(
                    table_schema=count.schema,
                    table_name=count.name,
                    rows=count.rows,
                    fingerprint=count.fingerprint,
                    via_root=count.via_root,
                    filenode=filenode if filenode is not None else relation.filenode,
                )
            )
    return TablesRead(
        database_oid=database_oid,
        content=fingerprint,
        seconds=round(time.monotonic() - started, 3),
        tables=tables,
    )


def prove_database(
    target: PgEndpoint, doc: dict[str, Any], cfg: TargetConfig, read: TablesRead | None = None
) -> Proof:
    """Measure a restored database and compare it with the dump's table document.

    :param doc: the decrypted ``tables.json`` of the set (any release's)
    :param read: tables already read in this database (``read_tables``): each is taken as read
        while its storage (filenode) is the one it was read from, and scanned again otherwise
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
        already = read.usable(_database_oid(cur), fingerprint) if read else {}
        restored: list[TableCount] = []
        hidden: list[tuple[str, str]] = []
        taken = 0
        for relation in list_relations(cur, schemas, exclude):
            done = already.get((relation.schema, relation.name))
            if done is not None and relation.kind == "table" and done.filenode == relation.filenode:
                restored.append(done.count())
                taken += 1
                continue
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
    if read is not None:
        log.info(
            "verify: %d of %d table(s) as the restore read them (%.1f s, while indexes were "
            "built); the rest read now",
            taken,
            len(read.tables),
            read.seconds,
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
    note = rt.staging.read_note(layout.TABLES_READ_NOTE) if restored.tables_read else None
    proof = prove_database(target, doc, cfg, TablesRead.model_validate_json(note) if note else None)
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
