"""The restore stage: a scratch database per backup, pg_restore -j into it, dropped afterwards.

A dump is a custom-format file, or (``dump.jobs`` > 1) a directory-format dump packed into one
tar file; the tar is unpacked next to it, its hash checked in the same pass, before
``pg_restore -j`` reads the directory.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pg_backup import layout, staging, tools
from pg_backup.config import TargetConfig
from pg_backup.dump import DUMP_DIR, DumpFormat, quote_ident
from pg_backup.pgconn import PgEndpoint, endpoint
from pg_backup.staging import HashingReader, Progress, StagedFile

log = logging.getLogger(__name__)

_EXTENSION = re.compile(r"^\d+;\s+\d+\s+\d+\s+EXTENSION\s+-\s+(\S+)", re.M)


class RestoreError(RuntimeError):
    """The dump cannot be restored where we were asked to restore it."""


@dataclass(frozen=True)
class RestoreResult:
    """How the restore went."""

    database: str
    seconds: float
    jobs: int

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-able dict for XCom."""
        return asdict(self)


def refuse_source(scratch: PgEndpoint, source: PgEndpoint, database: str) -> None:
    """Never create, restore into or drop anything in the source database."""
    if scratch.with_db(database).same_database_as(source):
        raise RestoreError(
            f"refusing to use {scratch.with_db(database).describe()}: it is the source database "
            f"of connection {source.conn_id!r}"
        )


def create_database(server: PgEndpoint, name: str, encoding: str = "UTF8") -> None:
    """(Re)create an empty database; a retried task gets a clean one, never a twin."""
    with server.connect(autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        # template0 + C locale accept any encoding, so the source's encoding always works.
        conn.execute(
            f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0 ENCODING '{encoding}'"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    log.info("created database %s on %s", name, server.describe())


def drop_database(server: PgEndpoint, name: str) -> bool:
    """Drop a database if it exists (WITH FORCE ends sessions left by a killed restore)."""
    with server.connect(autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    return bool(exists)


def create_scratch_db(cfg: TargetConfig, run: layout.RunInfo, encoding: str) -> str:
    """Set-up task: the empty verification database ``pgb_verify_<backup_id>``."""
    scratch = endpoint(cfg.scratch_conn_id)
    name = layout.scratch_db_name(run.backup_id)
    refuse_source(scratch, endpoint(cfg.source_conn_id), name)
    create_database(scratch, name, encoding)
    return name


def drop_scratch_db(cfg: TargetConfig, run: layout.RunInfo) -> bool:
    """Tear-down task: drop the verification database, whatever happened before."""
    scratch = endpoint(cfg.scratch_conn_id)
    name = layout.scratch_db_name(run.backup_id)
    refuse_source(scratch, endpoint(cfg.source_conn_id), name)
    dropped = drop_database(scratch, name)
    log.info("teardown: %s %s", "dropped" if dropped else "no database", name)
    return dropped


def required_extensions(pg_restore: str, dump_file: str) -> list[str]:
    """Extensions the dump will CREATE, read from its table of contents."""
    toc = tools.run([pg_restore, "--list", dump_file], {})
    return sorted(set(_EXTENSION.findall(toc)))


def check_extensions(server: PgEndpoint, needed: list[str]) -> None:
    """Fail before restoring if the target server cannot create an extension the dump needs."""
    if not needed:
        return
    with server.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", (needed,)
        ).fetchall()
    missing = sorted(set(needed) - {r[0] for r in rows})
    if missing:
        raise RestoreError(
            f"the server {server.describe()} lacks extension(s) {', '.join(missing)} that the "
            "dump needs: install them there (for example the postgresql-<major>-<name> package) "
            "or restore onto a server that has them"
        )


def dump_format_of(path: Path) -> DumpFormat:
    """What kind of dump ``path`` holds: a directory or a tar of one, else a custom-format file."""
    if path.is_dir():
        return "directory"
    with path.open("rb") as handle:
        head = handle.read(512)
    # A custom-format file starts with "PGDMP"; a POSIX tar has "ustar" at offset 257.
    return "directory" if head[257:262] == b"ustar" else "custom"


def unpack_dump(src: Path, dest: Path, expected: StagedFile | None = None) -> Path:
    """Unpack a packed directory-format dump into the directory ``dest`` and return it.

    Only plain files one level below the packed directory are accepted (what pg_dump writes);
    with ``expected``, the tar's size and sha256 are checked in the same pass, and a mismatch
    removes what was unpacked.
    """
    import tarfile

    staging.remove_dir(dest)  # left by an earlier attempt
    dest.mkdir(parents=True, mode=0o700)
    progress = Progress(f"unpack {src.name}", src.stat().st_size)
    try:
        with src.open("rb") as raw:
            reader = HashingReader(raw, progress)
            try:
                _extract(reader, dest, src)
            except (tarfile.TarError, RestoreError) as exc:
                # Damaged bytes: say so if the hash proves it, else the tar itself is wrong.
                while reader.read(staging.CHUNK):
                    pass
                if expected is not None:
                    reader.check(src, expected)
                raise RestoreError(f"{src} is not a packed pg_dump directory: {exc}") from None
            while reader.read(staging.CHUNK):  # the tar's end padding: hashed like the rest
                pass
            if expected is not None:
                reader.check(src, expected)
        if not (dest / "toc.dat").is_file():
            raise RestoreError(f"{src} holds no toc.dat: it is not a packed pg_dump directory")
    except BaseException:
        staging.remove_dir(dest)
        raise
    progress.summary(reader.count, reader.count)
    return dest


def _extract(reader: HashingReader, dest: Path, src: Path) -> None:
    """Stream the tar's plain files into ``dest`` (no links, no paths that leave it)."""
    import shutil
    import tarfile

    stream = tarfile.open(fileobj=reader, mode="r|", bufsize=staging.CHUNK)  # type: ignore[call-overload]
    with stream as tar:
        for member in tar:
            _, _, name = member.name.partition("/")
            if member.isdir() and not name:
                continue
            if not member.isfile() or not name or "/" in name or name in {".", ".."}:
                raise RestoreError(f"unexpected member {member.name!r}")
            data = tar.extractfile(member)
            with data, (dest / name).open("wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(data, out, staging.CHUNK)


def restore_dump(
    target: PgEndpoint, dump_file: str, jobs: int, pg_bin_dir: str | None = None
) -> float:
    """pg_restore -j into an existing empty database; any error fails with pg_restore's messages.

    ``dump_file`` is a custom-format file, a directory-format dump, or a tar of one (unpacked
    next to it for the restore, and removed afterwards; the time includes the unpacking).
    """
    path = Path(dump_file)
    if path.is_file() and dump_format_of(path) == "directory":
        started = time.monotonic()
        unpacked = unpack_dump(path, path.with_name(path.name + ".d"))
        try:
            return time.monotonic() - started + _pg_restore(target, str(unpacked), jobs, pg_bin_dir)
        finally:
            staging.remove_dir(unpacked)
    return _pg_restore(target, dump_file, jobs, pg_bin_dir)


def _pg_restore(target: PgEndpoint, dump_file: str, jobs: int, pg_bin_dir: str | None) -> float:
    pg_restore = tools.tool_path("pg_restore", pg_bin_dir)
    check_extensions(target, required_extensions(pg_restore, dump_file))
    argv = [
        pg_restore,
        f"--jobs={jobs}",
        "--no-owner",
        "--no-privileges",
        f"--dbname={target.dbname}",
        dump_file,
    ]
    progress = staging.Progress(f"restore into {target.dbname}")
    with progress.watching(lambda: database_size(target)):
        tools.run(argv, target.libpq_env(), hint=f" restoring into {target.describe()}")
    return progress.seconds


def database_size(target: PgEndpoint) -> int:
    """Bytes the database holds so far: the progress measure of a restore."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def restore_staged(
    cfg: TargetConfig, run: layout.RunInfo, dump: StagedFile, database: str
) -> RestoreResult:
    """Restore the staged dump (checked against its hash first) into the scratch database."""
    path = run.staging_path / dump.name
    staging.check_present(path, dump)
    unpacked = None
    if dump_format_of(path) == "directory":
        # Unpacking reads the tar once and checks its hash in that same pass.
        unpacked = unpack_dump(path, run.staging_path / DUMP_DIR, dump)
    else:
        staging.verify_file(path, dump, "restore")
    try:
        scratch = endpoint(cfg.scratch_conn_id).with_db(database)
        refuse_source(scratch, endpoint(cfg.source_conn_id), database)
        seconds = restore_dump(
            scratch, str(unpacked or path), cfg.restore.jobs, cfg.dump.pg_bin_dir
        )
    finally:
        if unpacked is not None:
            staging.remove_dir(unpacked)
    log.info(
        "restore done: %s into %s, %.1f MB/s, %.1f s (pg_restore -j %d)",
        f"{dump.bytes / 1e6:,.1f} MB",
        database,
        dump.bytes / 1e6 / max(seconds, 1e-9),
        seconds,
        cfg.restore.jobs,
    )
    return RestoreResult(database=database, seconds=round(seconds, 3), jobs=cfg.restore.jobs)
