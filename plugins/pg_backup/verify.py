"""The verify stage: every restored relation holds exactly the rows counted in the snapshot."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pg_backup import layout, staging
from pg_backup.config import TargetConfig
from pg_backup.dump import DumpResult, TableCount, count_relations, counts_from_json
from pg_backup.manifest import Verification
from pg_backup.pgconn import PgEndpoint, endpoint
from pg_backup.storage import Storage, open_storage, retain_until

log = logging.getLogger(__name__)


class CountMismatch(RuntimeError):
    """Restored counts differ from the snapshot counts."""


@dataclass(frozen=True)
class Difference:
    """One relation whose restored state differs from the snapshot."""

    label: str
    expected: int | None  # None: not in the dump's snapshot (an extra relation)
    restored: int | None  # None: missing after restore


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing snapshot and restored counts."""

    checked: int
    rows: int
    differences: list[Difference] = field(default_factory=list)
    # Materialized views are refreshed by pg_restore from the restored tables; a source view
    # that was stale at dump time legitimately comes back with another row count.
    warnings: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differs."""
        return not self.differences


def compare_counts(expected: list[TableCount], restored: list[TableCount]) -> Comparison:
    """Match relations by (schema, name); missing, extra and different counts are differences."""
    want = {c.key: c for c in expected}
    got = {c.key: c for c in restored}
    differences: list[Difference] = []
    warnings: list[Difference] = []
    for key in sorted(want.keys() | got.keys()):
        before, after = want.get(key), got.get(key)
        if before and after and before.rows == after.rows:
            continue
        label = (before or after).label  # type: ignore[union-attr]
        diff = Difference(label, before.rows if before else None, after.rows if after else None)
        if before and after and before.kind == "matview" and after.rows >= 0:
            warnings.append(diff)
        else:
            differences.append(diff)
    return Comparison(
        checked=len(want),
        rows=sum(c.rows for c in expected if c.rows > 0),
        differences=differences,
        warnings=warnings,
    )


def format_differences(items: list[Difference]) -> str:
    """A fixed-width table a person can read in a log or an email."""

    def show(value: int | None) -> str:
        return "missing" if value is None else f"{value:,}"

    width = max([len("relation")] + [len(d.label) for d in items])
    lines = [f"{'relation':<{width}}  {'snapshot':>14}  {'restored':>14}"]
    lines += [f"{d.label:<{width}}  {show(d.expected):>14}  {show(d.restored):>14}" for d in items]
    return "\n".join(lines)


def compare_database(
    target: PgEndpoint, expected: list[TableCount], schemas: list[str], exclude: list[str]
) -> Comparison:
    """Count a restored database and compare it with the snapshot counts."""
    with target.connect(autocommit=True) as conn, conn.cursor() as cur:
        restored = count_relations(cur, schemas, exclude)
    return compare_counts(expected, restored)


def verify_counts(
    cfg: TargetConfig,
    run: layout.RunInfo,
    dumped: DumpResult,
    database: str,
    restore_seconds: float,
    store: Storage | None = None,
) -> Verification:
    """Count the scratch database, compare, and store verification.json beside the manifest."""
    started = time.monotonic()
    expected = counts_from_json(
        json.loads(staging.read_small(run.staging_path / dumped.tables.name, dumped.tables))
    )
    scratch = endpoint(cfg.scratch_conn_id).with_db(database)
    result = compare_database(scratch, expected, cfg.dump.schemas, cfg.dump.exclude_schemas)
    record = Verification(
        backup_id=run.backup_id,
        status="verified" if result.ok else "failed",
        checked_at=datetime.now(UTC).isoformat(),
        relations_checked=result.checked,
        rows_checked=result.rows,
        mismatches=len(result.differences),
        warnings=len(result.warnings),
        restore_seconds=round(restore_seconds, 3),
        verify_seconds=round(time.monotonic() - started, 3),
    )
    store = store or open_storage(cfg.storage)
    store.put_bytes(
        run.prefix + layout.VERIFICATION_OBJECT,
        record.to_bytes(),
        retain_until(cfg.storage, run.taken_at),
    )
    if result.warnings:
        log.warning(
            "verify: materialized views differ from the snapshot (stale on the source; "
            "pg_restore refreshed them):\n%s",
            format_differences(result.warnings),
        )
    if not result.ok:
        raise CountMismatch(
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
