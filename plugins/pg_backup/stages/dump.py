"""The dump stage: one exported snapshot, exact counts and fingerprints inside it, pg_dump under it.

A ``REPEATABLE READ, READ ONLY`` transaction exports its snapshot and stays open while
``pg_dump --snapshot`` runs. In that snapshot it records the relations in scope (with the
storage each one has), the object inventory, and, once pg_dump holds its locks, the row count
and content fingerprint of every table, one scan each (``core.fingerprint``), while pg_dump
works.

A sound snapshot: TRUNCATE and table rewrites are not MVCC-safe. A table truncated or rewritten
after the snapshot was exported but before pg_dump locked it reads as empty (or old) to pg_dump
and to the counts alike. Each table is therefore read only after pg_dump holds its lock, and
under the read's own lock its storage (``pg_relation_filenode``) must be the storage the
snapshot sees; a table whose storage changed is named and the whole dump is taken again with a
new snapshot (``ATTEMPTS``), then fails naming it. Reads happen in subtransactions rolled back
after each table, so this session never holds a table lock while idle (no deadlock with an
application queueing an exclusive lock behind it) and never adds to the locks pg_dump holds.
Every session here has ``lock_timeout = dump.lock_wait_timeout`` and ``row_security = off``.

One pass over the dump's bytes: with one job, pg_dump writes the custom format to its stdout;
a side thread copies the pipe into ``db.dump.part`` and takes its sha256 as the bytes go to disk
(``staging.PipeToFile``), then fsyncs and renames it. The file is never read back to hash it.
The hand-off hash stays sha256: on this kind of CPU (SHA-NI) it runs at about 1.2 GB/s on one
core, about 0.8 s per GB, against pg_dump's output of under 100 MB/s, in a thread that overlaps
pg_dump; xxh3-128 is 10x faster, but the same sha256 is what ``tables.json`` records for the
decompressed data object and what ``sha256sum`` checks in a restore by hand (docs/performance.md).

With ``dump.jobs`` > 1, ``pg_dump --format=directory --jobs=N`` dumps tables in parallel under
the same exported snapshot, and the directory is packed into ``db.dump`` as one uncompressed tar
(hashed in the pass that writes it), so the later stages still hand over a single file. The
stock restore is then ``age -d | zstd -d | tar -x`` and ``pg_restore -j N`` on ``db.dump.d``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from pg_backup.adapters import staging, tools
from pg_backup.adapters.archive import pack_directory
from pg_backup.adapters.dbprops import capture
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.counts import (
    LOCK_BUDGET_SQL,
    Relation,
    TableCount,
    counts_to_json,
    list_relations,
    lock_budget_problem,
    measure,
    measure_large_objects,
)
from pg_backup.core.errors import DumpError, ToolFailed
from pg_backup.core.fingerprint import ALGORITHM, PROBE_SQL, session_options
from pg_backup.core.inventory import Inventory, sequence_values, take_inventory
from pg_backup.core.names import DumpFormat
from pg_backup.core.records import DumpResult
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)

# Dumps taken before giving up on a table that keeps being truncated or rewritten under the
# snapshot, and the pause before each new try (seconds).
ATTEMPTS = 3
RETRY_PAUSES = (1.0, 3.0)
# How often to look whether pg_dump holds its locks yet (seconds).
LOCK_POLL = 0.02
# How long a sequence read waits for a lock (milliseconds).
SEQUENCE_LOCK_MS = 1000

# Relations locked (granted) by the pg_dump session(s) of this attempt, among those given.
_DUMP_LOCKS_SQL = """
SELECT count(DISTINCT l.relation) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE a.application_name = %(app)s AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = ANY(%(oids)s::oid[])
"""


def _pattern(name: str) -> str:
    """A schema name as a pg_dump pattern matching exactly that name (quoted, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def dump_format(cfg: TargetConfig) -> DumpFormat:
    """Custom format (one file) for one job; directory format for parallel jobs."""
    return "directory" if cfg.dump.jobs > 1 else "custom"


def lock_timeout_ms(cfg: TargetConfig) -> int:
    """``dump.lock_wait_timeout`` in milliseconds: the limit of every lock wait on the source."""
    return int(cfg.dump.lock_wait_timeout.total_seconds() * 1000)


def pg_dump_argv(pg_dump: str, cfg: TargetConfig, snapshot: str, out: str | None) -> list[str]:
    """pg_dump's argv: no host, user or password here (they travel in the environment).

    :param out: the directory of the directory format; None for the custom format, which
        pg_dump writes to its stdout (copied to staging and hashed in that one pass)
    """
    if dump_format(cfg) == "directory":
        layout_args = ["--format=directory", f"--jobs={cfg.dump.jobs}"]
    else:
        layout_args = ["--format=custom"]
    argv = [
        pg_dump,
        *layout_args,
        "--compress=0",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={lock_timeout_ms(cfg)}",
        "--blobs",
    ]
    if out is not None:
        argv.append(f"--file={out}")
    argv += [f"--schema={_pattern(s)}" for s in cfg.dump.schemas]
    argv += [f"--exclude-schema={_pattern(s)}" for s in cfg.dump.exclude_schemas]
    return argv


def check_lock_budget(cur: Any, cfg: TargetConfig) -> None:
    """Fail fast when pg_dump could not lock every table at once on this server.

    :raises DumpError: naming max_locks_per_transaction and the value to set
    """
    cur.execute(LOCK_BUDGET_SQL, {"schemas": cfg.dump.schemas, "exclude": cfg.dump.exclude_schemas})
    problem = lock_budget_problem(*cur.fetchone())
    if problem:
        raise DumpError(problem)


def content_scope(cfg: TargetConfig, relations: list[Relation]) -> set[tuple[str, str]]:
    """The (schema, name) of every relation whose content is fingerprinted (``verify.content``).

    :raises DumpError: a listed table is not in the dump scope (names the entry and the fix)
    """
    setting = cfg.verify.content
    if setting == "all":
        return {(r.schema, r.name) for r in relations}
    if setting == "off":
        return set()
    known = {(r.schema, r.name) for r in relations}
    wanted = {tuple(name.split(".", 1)) for name in setting}
    unknown = sorted(".".join(w) for w in wanted - known)
    if unknown:
        raise DumpError(
            f"verify.content names {', '.join(unknown)}, not a table or materialized view in "
            "the dump scope: correct the schema.table name(s) or remove them"
        )
    return wanted  # type: ignore[return-value]


class _Raced(Exception):
    """Tables whose storage changed under the snapshot (truncated or rewritten)."""

    def __init__(self, labels: list[str]):
        super().__init__(", ".join(labels))
        self.labels = labels


def run_dump(rt: Runtime) -> DumpResult:
    """Dump the source under an exported snapshot; count and fingerprint it inside that snapshot.

    :raises DumpError: a table kept being truncated or rewritten under the snapshot (after
        ``ATTEMPTS`` dumps), a lock was not granted within ``dump.lock_wait_timeout``, rows are
        hidden from the backup login by row-level security, or too many tables to lock
    :raises ToolFailed: pg_dump failed (its messages are in the exception)
    """
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _dump_once(rt)
        except _Raced as raced:
            if attempt == ATTEMPTS:
                raise DumpError(
                    f"{raced}: truncated or rewritten by another session (TRUNCATE, ALTER TABLE "
                    "... TYPE, CLUSTER, VACUUM FULL) after the snapshot was taken and before "
                    f"pg_dump locked it, in each of {ATTEMPTS} dumps: the snapshot's rows of "
                    "that table cannot be read. Run the backup when that job does not, or let "
                    "the job DELETE rows instead of truncating"
                ) from None
            pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES)) - 1]
            log.warning(
                "dump: %s changed storage under the snapshot (truncated or rewritten): "
                "dump %d of %d discarded, taking a new snapshot in %.0f s",
                raced,
                attempt,
                ATTEMPTS,
                pause,
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _dump_once(rt: Runtime) -> DumpResult:
    cfg, run, source = rt.cfg, rt.run, rt.source
    schemas, exclude = cfg.dump.schemas, cfg.dump.exclude_schemas
    pg_dump = tools.tool_path("pg_dump", cfg.dump.pg_bin_dir)
    _, pg_dump_version = tools.tool_version(pg_dump)
    workdir = staging.prepare_dir(run.staging_path)
    # A verification record an earlier pass of this run staged proved other bytes.
    rt.staging.drop_note(layout.VERIFICATION_OBJECT)
    out = workdir / layout.DUMP_FILE
    fmt = dump_format(cfg)
    # pg_dump writes the custom format to db.dump.part, the directory format to db.dump.d/.
    part = out.with_name(out.name + ".part") if fmt == "custom" else workdir / layout.DUMP_DIR
    if fmt == "directory":
        staging.remove_dir(part)  # left by an earlier attempt; pg_dump wants it absent
    progress = staging.Progress("dump")
    options = session_options(lock_timeout_ms(cfg))
    # pg_dump's sessions carry a name of their own: their locks are found by it.
    app = f"pg_backup dump {uuid.uuid4().hex[:12]}"

    from psycopg import IsolationLevel

    # The side session watches pg_dump's locks and reads sequence values; a sequence locked by
    # DDL is left out of the value check rather than waited for.
    side_options = session_options(min(lock_timeout_ms(cfg), SEQUENCE_LOCK_MS))
    with (
        source.connect(autocommit=False, options=options) as conn,
        source.connect(autocommit=True, options=side_options) as side,
    ):
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.cursor() as cur, side.cursor() as side_cur:
            cur.execute(
                "SELECT pg_export_snapshot(), now(), current_setting('server_version'),"
                " current_setting('server_version_num')::int / 10000,"
                " (SELECT pg_encoding_to_char(encoding) FROM pg_database"
                "  WHERE datname = current_database())"
            )
            row = cur.fetchone()
            assert row is not None  # a SELECT without FROM always returns its row
            snapshot, snapshot_at, server_version, server_major, encoding = row
            log.info("dump: snapshot %s exported at %s", snapshot, snapshot_at.isoformat())
            relations = list_relations(cur, schemas, exclude)
            check_lock_budget(cur, cfg)
            fingerprinted = content_scope(cfg, relations)
            probe = _scalar(cur, PROBE_SQL)
            sequences_before = sequence_values(side_cur, schemas, exclude)
            argv = pg_dump_argv(pg_dump, cfg, snapshot, str(part) if fmt == "directory" else None)
            sink: staging.PipeToFile | None = None
            try:
                with (
                    tools.child(
                        argv,
                        {**source.libpq_env(), "PGAPPNAME": app},
                        stdout=subprocess.PIPE if fmt == "custom" else subprocess.DEVNULL,
                    ) as proc,
                    progress.watching(lambda: sink.bytes if sink else _bytes_so_far(part)),
                ):
                    if fmt == "custom":
                        assert proc.stdout is not None  # stdout=PIPE
                        sink = staging.PipeToFile(proc.stdout, out, progress)
                    _await_dump_locks(side_cur, proc, app, relations)
                    if proc.poll() is not None and proc.returncode != 0:
                        raise _pg_dump_failed(proc, source.describe(), cfg, sink)
                    inventory = _inventory(cur, cfg)
                    counts = _measure_all(cur, relations, fingerprinted, cfg)
                    counts.append(_large_objects(cur, cfg))
                    # Locale, settings, roles and grants, in the same snapshot (no superuser).
                    props, globals_file = capture(
                        cur, cfg.dump.schemas, cfg.dump.exclude_schemas, workdir, run.backup_id
                    )
                    proc.wait()
                    if proc.returncode != 0:
                        raise _pg_dump_failed(proc, source.describe(), cfg, sink)
                if sink is not None:
                    dump = sink.finish(progress.seconds)
            except BaseException:
                # pg_dump has exited (``tools.child`` kills it): the copy has met the pipe's end.
                if sink is not None:
                    sink.discard()
                _discard(part)
                raise
            sequences_after = sequence_values(side_cur, schemas, exclude)
        conn.rollback()

    if fmt == "directory":
        dump = pack_directory(part, out, progress.seconds)
    tables = staging.write_json(
        workdir / layout.TABLES_FILE,
        counts_to_json(
            counts,
            backup_id=run.backup_id,
            snapshot_at=snapshot_at.isoformat(),
            server_version=server_version,
            # What the decompressed data object must be: checked by every restore from storage.
            dump={"bytes": dump.bytes, "sha256": dump.sha256, "format": fmt},
            fingerprint={"algorithm": ALGORITHM, "probe": probe},
            inventory=inventory,
            sequences={"before": sequences_before, "after": sequences_after},
            globals=props.model_dump(mode="json"),
        ),
    )
    progress.summary(dump.bytes, dump.bytes)
    # pg_dump wrote into this worker's directory: with object-store staging it goes up now.
    for staged in (dump, tables, globals_file):
        if staged is not None:
            rt.staging.publish(workdir / staged.name, staged)
    return DumpResult(
        dump=dump,
        tables=tables,
        snapshot_at=snapshot_at.isoformat(),
        server_version=server_version,
        server_major=int(server_major),
        pg_dump_version=pg_dump_version,
        encoding=encoding,
        relations=len(counts),
        rows=sum(c.rows for c in counts if c.rows > 0),
        dump_format=fmt,
        database=props.locale,
        globals=globals_file,
    )


def _scalar(cur: Any, query: str) -> Any:
    cur.execute(query)
    row = cur.fetchone()
    assert row is not None, query  # a SELECT without FROM always returns its row
    return row[0]


def _await_dump_locks(cur: Any, proc: Any, app: str, relations: list[Relation]) -> None:
    """Return once pg_dump holds its lock on every table in scope, or has exited.

    pg_dump locks every table before it reads any; a table read after that cannot be
    truncated or rewritten until pg_dump ends, so what the check in ``_measure_all`` finds
    holds for pg_dump's read too. pg_dump's own ``--lock-wait-timeout`` bounds the wait.
    """
    oids = [r.oid for r in relations if r.kind == "table"]
    pause = LOCK_POLL
    while proc.poll() is None:
        cur.execute(_DUMP_LOCKS_SQL, {"app": app, "oids": oids})
        if cur.fetchone()[0] >= len(oids):
            return
        time.sleep(pause)
        pause = min(pause * 1.5, 0.25)  # pg_dump may wait long for a lock: look less often


def _measure_all(
    cur: Any, relations: list[Relation], fingerprinted: set[tuple[str, str]], cfg: TargetConfig
) -> list[TableCount]:
    """Count and fingerprint each relation in a subtransaction of its own, smallest first.

    The subtransaction is rolled back after each relation, releasing the locks the read took.

    :raises _Raced: tables whose storage is not the one the snapshot sees
    :raises DumpError: a lock not granted in time, or rows hidden from the login
    """
    from psycopg import errors

    counts: list[TableCount] = []
    moved: list[str] = []
    for relation in sorted(relations, key=lambda r: (r.pages, r.schema, r.name)):
        cur.execute("SAVEPOINT pg_backup_read")
        try:
            count, filenode = measure(
                cur, relation, (relation.schema, relation.name) in fingerprinted, True
            )
        except errors.LockNotAvailable:
            raise DumpError(
                f"{relation.label}: lock not granted within dump.lock_wait_timeout "
                f"({cfg.dump.lock_wait_timeout}): another session holds or waits for an exclusive "
                "lock on it (a migration, TRUNCATE, VACUUM FULL). Run the backup after it, or "
                "raise dump.lock_wait_timeout"
            ) from None
        except errors.InsufficientPrivilege as exc:
            raise DumpError(_privilege_problem(relation, str(exc))) from None
        finally:
            cur.execute("ROLLBACK TO SAVEPOINT pg_backup_read; RELEASE SAVEPOINT pg_backup_read")
        # A materialized view is refreshed, not dumped: a refresh since the snapshot only
        # changes what the (warning-only) comparison of the view says.
        if filenode is not None and filenode != relation.filenode and relation.kind == "table":
            moved.append(relation.label)
        counts.append(count)
    if moved:
        raise _Raced(moved)
    return sorted(counts, key=lambda c: c.key)


def _inventory(cur: Any, cfg: TargetConfig) -> Inventory:
    """The object inventory in the snapshot, taken once pg_dump holds its locks.

    In a subtransaction rolled back afterwards: the deparsers' brief locks are never kept.
    """
    from psycopg import errors

    cur.execute("SAVEPOINT pg_backup_read")
    try:
        return take_inventory(cur, cfg.dump.schemas, cfg.dump.exclude_schemas)
    except errors.LockNotAvailable:
        raise DumpError(
            "a table stayed locked exclusively longer than dump.lock_wait_timeout "
            f"({cfg.dump.lock_wait_timeout}) while the definitions of its objects were read (a "
            "migration): run the backup after it, or raise dump.lock_wait_timeout"
        ) from None
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT pg_backup_read; RELEASE SAVEPOINT pg_backup_read")


def _large_objects(cur: Any, cfg: TargetConfig) -> TableCount:
    """Large objects counted, and fingerprinted when the login may read their pages."""
    from psycopg import errors

    cur.execute("SAVEPOINT pg_backup_read")
    try:
        return measure_large_objects(cur, cfg.verify.content != "off")
    except errors.InsufficientPrivilege:
        cur.execute("ROLLBACK TO SAVEPOINT pg_backup_read")
        return measure_large_objects(cur, False)
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT pg_backup_read; RELEASE SAVEPOINT pg_backup_read")


def _privilege_problem(relation: Relation, message: str) -> str:
    """What a permission error on a table means for the backup, and the fix."""
    first = message.strip().splitlines()[0] if message.strip() else "permission denied"
    if "row-level security" in message:
        return (
            f"{relation.label}: {first}. Row-level security hides rows of this table from the "
            "backup login: the backup would be incomplete. Give the login BYPASSRLS (ALTER ROLE "
            "<backup login> BYPASSRLS) or use the table's owner"
        )
    return (
        f"{relation.label}: {first}. The backup login must read every table: GRANT "
        "pg_read_all_data TO <backup login>"
    )


def _pg_dump_failed(
    proc: Any, where: str, cfg: TargetConfig, sink: staging.PipeToFile | None = None
) -> DumpError | ToolFailed:
    """pg_dump's failure, with the fix for a lock wait, row-level security, the lock table.

    :raises StagedFileError: the copy of pg_dump's output failed first (a full disk): pg_dump
        then only saw its pipe close
    """
    if sink is not None:
        sink.check()
    stderr = tools.stderr_of(proc)
    locking = re.search(r"LOCK TABLE (.+?) IN ACCESS SHARE MODE", stderr)
    if locking and "timeout" in stderr:
        return DumpError(
            f"pg_dump could not lock {locking.group(1)} of {where} within dump.lock_wait_timeout "
            f"({cfg.dump.lock_wait_timeout}): another session holds or waits for an exclusive "
            "lock on it (a migration, TRUNCATE, VACUUM FULL). Run the backup after it, or raise "
            "dump.lock_wait_timeout"
        )
    if "row-level security" in stderr:
        return DumpError(
            f"pg_dump refused a table of {where}: {stderr.strip().splitlines()[-1]}. Row-level "
            "security hides its rows from the backup login: give the login BYPASSRLS (ALTER "
            "ROLE <backup login> BYPASSRLS) or use the table's owner"
        )
    if "max_locks_per_transaction" in stderr:
        return DumpError(
            f"pg_dump ran out of the lock table of {where} ('out of shared memory'): set "
            "max_locks_per_transaction higher on the source server (it takes a restart), or "
            "narrow dump.schemas. pg_dump said: " + stderr.strip().splitlines()[-1]
        )
    return ToolFailed("pg_dump", proc.returncode, stderr, f" while dumping {where}")


def _bytes_so_far(part: Path) -> int:
    """Bytes pg_dump has written so far (one file, or the files of its directory)."""
    try:
        if part.is_dir():
            return sum(entry.stat().st_size for entry in os.scandir(part) if entry.is_file())
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _discard(part: Path) -> None:
    """Remove what a failed pg_dump left behind."""
    if part.is_dir():
        staging.remove_dir(part)
    else:
        part.unlink(missing_ok=True)
