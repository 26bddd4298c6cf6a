"""The dump stage: one exported snapshot, exact row counts inside it, pg_dump under it.

A ``REPEATABLE READ, READ ONLY`` transaction exports its snapshot and stays open while
``pg_dump --snapshot`` runs; the counts are taken in that transaction while pg_dump works, so
they describe exactly the rows in the dump however busy the source is.

With ``dump.jobs`` > 1, ``pg_dump --format=directory --jobs=N`` dumps tables in parallel under
the same snapshot, and the directory is packed into ``db.dump`` as one uncompressed tar (hashed
in the pass that writes it), so the later stages still hand over a single file. The stock
restore is then ``age -d | zstd -d | tar -x`` and ``pg_restore -j N`` on ``db.dump.d``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pg_backup.adapters import staging, tools
from pg_backup.adapters.archive import pack_directory
from pg_backup.adapters.dbprops import capture
from pg_backup.core import layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.counts import count_relations, counts_to_json
from pg_backup.core.errors import ToolFailed
from pg_backup.core.names import DumpFormat
from pg_backup.core.records import DumpResult, StagedFile
from pg_backup.stages.runtime import Runtime

log = logging.getLogger(__name__)


def _pattern(name: str) -> str:
    """A schema name as a pg_dump pattern matching exactly that name (quoted, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def dump_format(cfg: TargetConfig) -> DumpFormat:
    """Custom format (one file) for one job; directory format for parallel jobs."""
    return "directory" if cfg.dump.jobs > 1 else "custom"


def pg_dump_argv(pg_dump: str, cfg: TargetConfig, snapshot: str, out: str) -> list[str]:
    """pg_dump's argv: no host, user or password here (they travel in the environment)."""
    lock_ms = int(cfg.dump.lock_wait_timeout.total_seconds() * 1000)
    if dump_format(cfg) == "directory":
        layout_args = ["--format=directory", f"--jobs={cfg.dump.jobs}"]
    else:
        layout_args = ["--format=custom"]
    argv = [
        pg_dump,
        *layout_args,
        "--compress=0",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={lock_ms}",
        "--blobs",
        f"--file={out}",
    ]
    argv += [f"--schema={_pattern(s)}" for s in cfg.dump.schemas]
    argv += [f"--exclude-schema={_pattern(s)}" for s in cfg.dump.exclude_schemas]
    return argv


def run_dump(rt: Runtime) -> DumpResult:
    """Dump the source under an exported snapshot and count its rows inside the same snapshot."""
    cfg, run, source = rt.cfg, rt.run, rt.source
    pg_dump = tools.tool_path("pg_dump", cfg.dump.pg_bin_dir)
    _, pg_dump_version = tools.tool_version(pg_dump)
    workdir = staging.prepare_dir(run.staging_path)
    out = workdir / layout.DUMP_FILE
    fmt = dump_format(cfg)
    # pg_dump writes the custom format to db.dump.part, the directory format to db.dump.d/.
    part = out.with_name(out.name + ".part") if fmt == "custom" else workdir / layout.DUMP_DIR
    if fmt == "directory":
        staging.remove_dir(part)  # left by an earlier attempt; pg_dump wants it absent
    progress = staging.Progress("dump")

    from psycopg import IsolationLevel

    with source.connect(autocommit=False) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.cursor() as cur:
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
            argv = pg_dump_argv(pg_dump, cfg, snapshot, str(part))
            try:
                with (
                    tools.child(argv, source.libpq_env()) as proc,
                    progress.watching(lambda: _bytes_so_far(part)),
                ):
                    # Counting runs while pg_dump works: both read the same snapshot.
                    counts = count_relations(cur, cfg.dump.schemas, cfg.dump.exclude_schemas)
                    # Locale, settings, roles and grants, in the same snapshot (no superuser).
                    props, globals_file = capture(
                        cur, cfg.dump.schemas, cfg.dump.exclude_schemas, workdir, run.backup_id
                    )
                    proc.wait()
                    if proc.returncode != 0:
                        raise ToolFailed(
                            "pg_dump",
                            proc.returncode,
                            tools.stderr_of(proc),
                            f" while dumping {source.describe()}",
                        )
            except BaseException:
                _discard(part)
                raise
        conn.rollback()

    if fmt == "directory":
        dump = pack_directory(part, out, progress.seconds)
    else:
        dump = _seal(part, out, progress.seconds)
    tables = staging.write_json(
        workdir / layout.TABLES_FILE,
        counts_to_json(
            counts,
            backup_id=run.backup_id,
            snapshot_at=snapshot_at.isoformat(),
            server_version=server_version,
            # What the decompressed data object must be: checked by every restore from storage.
            dump={"bytes": dump.bytes, "sha256": dump.sha256, "format": fmt},
            globals=props.model_dump(mode="json"),
        ),
    )
    progress.summary(dump.bytes, dump.bytes)
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


def _seal(part: Path, out: Path, seconds: float) -> StagedFile:
    """Hash pg_dump's finished file in one read, fsync it, and give it its final name."""
    import hashlib

    sha = hashlib.sha256()
    size = 0
    try:
        with open(part, "rb") as handle:
            while chunk := handle.read(staging.CHUNK):
                sha.update(chunk)
                size += len(chunk)
            os.fsync(handle.fileno())
        os.replace(part, out)
        staging.fsync_dir(out.parent)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return StagedFile(name=out.name, bytes=size, sha256=sha.hexdigest(), seconds=round(seconds, 3))
