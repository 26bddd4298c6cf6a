"""The verify stage: every restored relation holds exactly the rows counted in the snapshot.

Writes ``verification.json`` beside the manifest whatever the outcome, then fails on any
difference, naming each relation.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pg_backup.adapters import catalog_index, staging
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.adapters.storage import retain_until
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.counts import (
    Comparison,
    TableCount,
    compare_counts,
    count_relations,
    counts_from_json,
    format_differences,
)
from pg_backup.core.errors import VerificationFailed
from pg_backup.core.manifest import Verification
from pg_backup.core.records import DumpResult, RestoreResult, UploadResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def compare_database(
    target: PgEndpoint, expected: list[TableCount], cfg: TargetConfig
) -> Comparison:
    """Count a restored database (the target's dump scope) and compare with the snapshot."""
    with target.connect(autocommit=True) as conn, conn.cursor() as cur:
        restored = count_relations(cur, cfg.dump.schemas, cfg.dump.exclude_schemas)
    return compare_counts(expected, restored)


def verify_restore(rt: Runtime, dumped: DumpResult, restored: RestoreResult) -> Verification:
    """Count the scratch database, compare, and store verification.json beside the manifest.

    :raises VerificationFailed: a relation differs (the record is stored first, as failed)
    """
    cfg, run = rt.cfg, rt.run
    started = time.monotonic()
    expected = counts_from_json(
        json.loads(staging.read_small(run.staging_path / dumped.tables.name, dumped.tables))
    )
    target = rt.scratch_databases.endpoint(restored.database)
    result = compare_database(target, expected, cfg)
    record = Verification(
        backup_id=run.backup_id,
        status="verified" if result.ok else "failed",
        checked_at=datetime.now(UTC).isoformat(),
        relations_checked=result.checked,
        rows_checked=result.rows,
        mismatches=len(result.differences),
        warnings=len(result.warnings),
        restore_seconds=round(restored.seconds, 3),
        verify_seconds=round(time.monotonic() - started, 3),
    )
    rt.storage.put_bytes(
        run.prefix + layout.VERIFICATION_OBJECT,
        record.to_bytes(),
        retain_until(cfg.storage, run.taken_at),
    )
    catalog_index.record_verification(rt.storage, run.target, record)
    if result.warnings:
        log.warning(
            "verify: materialized views differ from the snapshot (stale on the source; "
            "pg_restore refreshed them):\n%s",
            format_differences(result.warnings),
        )
    if not result.ok:
        raise VerificationFailed(
            f"backup {run.backup_id}: {len(result.differences)} of {result.checked} relations "
            "differ between the snapshot and the restore:\n"
            + format_differences(result.differences)
        )
    log.info(
        "verify done: %d relations, %s rows match exactly, %.1f s",
        result.checked,
        f"{result.rows:,}",
        record.verify_seconds,
    )
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
    }
