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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pg_backup import layout, staging, tools
from pg_backup.config import TargetConfig
from pg_backup.layout import RunInfo
from pg_backup.pgconn import PgEndpoint, endpoint
from pg_backup.staging import StagedFile

log = logging.getLogger(__name__)

LARGE_OBJECTS = "<large objects>"

DumpFormat = Literal["custom", "directory"]
# The directory a parallel dump is written to, and its name inside the packed tar: the stock
# ``tar -x`` recreates it under this name.
DUMP_DIR = "db.dump.d"

# Tables pg_dump writes data for: ordinary tables and leaf partitions ('r'), populated
# materialized views ('m'); not partitioned parents (no rows of their own), not members of
# extensions (pg_dump skips them), not temporary or system schemas.
_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm')
  AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema'
  AND n.nspname NOT LIKE 'pg\\_%%'
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
  AND NOT EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid AND d.deptype = 'e')
  AND (cardinality(%(schemas)s::text[]) = 0 OR n.nspname = ANY(%(schemas)s::text[]))
  AND NOT (n.nspname = ANY(%(exclude)s::text[]))
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class TableCount:
    """Rows of one relation (or of all large objects) in a snapshot."""

    schema: str
    name: str
    kind: str  # "table", "matview" or "large_objects"
    rows: int

    @property
    def key(self) -> tuple[str, str]:
        """Identity used to match source and restored counts."""
        return (self.schema, self.name)

    @property
    def label(self) -> str:
        """``"schema"."name"`` as a person would write it."""
        if self.kind == "large_objects":
            return LARGE_OBJECTS
        return f'"{self.schema}"."{self.name}"'


@dataclass(frozen=True)
class DumpResult:
    """What the dump stage hands on (no table names: XCom is not the place for them)."""

    dump: StagedFile
    tables: StagedFile
    snapshot_at: str
    server_version: str
    server_major: int
    pg_dump_version: str
    encoding: str
    relations: int
    rows: int
    dump_format: DumpFormat = "custom"

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)

    @classmethod
    def from_xcom(cls, data: dict[str, Any]) -> DumpResult:
        """Rebuild from an XCom dict."""
        values = dict(data)
        values["dump"] = StagedFile.from_xcom(values["dump"])
        values["tables"] = StagedFile.from_xcom(values["tables"])
        return cls(**values)


def quote_ident(name: str) -> str:
    """Quote an identifier the way PostgreSQL does for any name."""
    return '"' + name.replace('"', '""') + '"'


def count_relations(cur: Any, schemas: list[str], exclude: list[str]) -> list[TableCount]:
    """Exact counts of every relation in the dump scope, in the cursor's snapshot."""
    cur.execute(_TABLES_SQL, {"schemas": schemas, "exclude": exclude})
    counts: list[TableCount] = []
    for schema, name, relkind, populated in cur.fetchall():
        kind = "matview" if relkind == "m" else "table"
        if kind == "matview" and not populated:
            counts.append(TableCount(schema, name, kind, -1))
            continue
        cur.execute(f"SELECT count(*) FROM ONLY {quote_ident(schema)}.{quote_ident(name)}")
        counts.append(TableCount(schema, name, kind, int(cur.fetchone()[0])))
    cur.execute("SELECT count(*) FROM pg_largeobject_metadata")
    counts.append(TableCount("", LARGE_OBJECTS, "large_objects", int(cur.fetchone()[0])))
    return counts


def counts_to_json(counts: list[TableCount], **meta: Any) -> dict[str, Any]:
    """The document stored (encrypted) as tables.json."""
    return {**meta, "relations": [asdict(c) for c in counts]}


def counts_from_json(data: dict[str, Any]) -> list[TableCount]:
    """Inverse of counts_to_json."""
    return [TableCount(**item) for item in data["relations"]]


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
    argv += [f"--schema={quote_ident(s)}" for s in cfg.dump.schemas]
    argv += [f"--exclude-schema={quote_ident(s)}" for s in cfg.dump.exclude_schemas]
    return argv


def run_dump(cfg: TargetConfig, run: RunInfo, source: PgEndpoint | None = None) -> DumpResult:
    """Dump the source under an exported snapshot and count its rows inside the same snapshot."""
    source = source or endpoint(cfg.source_conn_id)
    pg_dump = tools.tool_path("pg_dump", cfg.dump.pg_bin_dir)
    _, pg_dump_version = tools.tool_version(pg_dump)
    workdir = staging.prepare_dir(run.staging_path)
    out = workdir / layout.DUMP_FILE
    fmt = dump_format(cfg)
    # pg_dump writes the custom format to db.dump.part, the directory format to db.dump.d/.
    part = out.with_name(out.name + ".part") if fmt == "custom" else workdir / DUMP_DIR
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
                    proc.wait()
                    if proc.returncode != 0:
                        raise tools.ToolFailed(
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


class _Positioned:
    """A HashingWriter with the ``tell`` tarfile asks for (bytes written so far)."""

    def __init__(self, writer: staging.HashingWriter):
        self.write = writer.write
        self._writer = writer

    def tell(self) -> int:
        return self._writer.count


def pack_directory(tree: Path, out: Path, seconds: float) -> StagedFile:
    """Pack pg_dump's directory into ``out`` as an uncompressed tar, hashed in the same pass.

    Members are ``db.dump.d/toc.dat`` first, then the data files by name, owned by nobody in
    particular: the same directory packs to the same bytes apart from file times.
    """
    import tarfile

    started = time.monotonic()
    names = sorted(os.listdir(tree), key=lambda name: (name != "toc.dat", name))
    with staging.atomic_output(out) as handle:
        writer = staging.HashingWriter(handle)
        with tarfile.TarFile(
            fileobj=_Positioned(writer),  # type: ignore[arg-type]
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=staging.CHUNK,
        ) as tar:
            tar.addfile(_member(tar, tree, DUMP_DIR, 0o700))
            for name in names:
                path = tree / name
                info = _member(tar, path, f"{DUMP_DIR}/{name}", 0o600)
                if not info.isfile():
                    raise RuntimeError(f"pg_dump left {path}, which is not a regular file")
                with path.open("rb") as data:
                    tar.addfile(info, data)
    staging.remove_dir(tree)
    seconds += time.monotonic() - started
    log.info("dump: packed %d files of %s into %s", len(names), tree.name, out.name)
    return writer.staged(out.name, seconds)


def _member(tar: Any, path: Path, arcname: str, mode: int) -> Any:
    info = tar.gettarinfo(str(path), arcname)
    info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "", ""
    return info


def _seal(part: Any, out: Any, seconds: float) -> StagedFile:
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
