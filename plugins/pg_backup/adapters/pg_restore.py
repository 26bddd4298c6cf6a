"""pg_restore, wrapped once: the extensions a dump needs, then ``pg_restore -j`` into a database.

Any error fails with pg_restore's own messages; the password travels in the child's environment.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pg_backup.adapters import staging, tools
from pg_backup.adapters.archive import dump_format_of, unpack_dump
from pg_backup.adapters.databases import database_size
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core.errors import RestoreError

_EXTENSION = re.compile(r"^\d+;\s+\d+\s+\d+\s+EXTENSION\s+-\s+(\S+)", re.M)


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


def restore_dump(
    target: PgEndpoint,
    dump_file: str,
    jobs: int,
    pg_bin_dir: str | None = None,
    owners: bool = False,
) -> float:
    """pg_restore -j into an existing empty database; return the seconds it took.

    ``dump_file`` is a custom-format file, a directory-format dump, or a tar of one (unpacked
    next to it for the restore, and removed afterwards; the time includes the unpacking).
    ``owners``: keep the dump's owners and grants (every role they name must exist); without,
    ``--no-owner --no-privileges``.

    :raises ToolFailed: pg_restore reported an error (its messages are in the exception)
    :raises RestoreError: the target server lacks an extension the dump needs
    """
    path = Path(dump_file)
    if path.is_file() and dump_format_of(path) == "directory":
        started = time.monotonic()
        unpacked = unpack_dump(path, path.with_name(path.name + ".d"))
        try:
            seconds = _pg_restore(target, str(unpacked), jobs, pg_bin_dir, owners)
            return time.monotonic() - started + seconds
        finally:
            staging.remove_dir(unpacked)
    return _pg_restore(target, dump_file, jobs, pg_bin_dir, owners)


def _pg_restore(
    target: PgEndpoint, dump_file: str, jobs: int, pg_bin_dir: str | None, owners: bool
) -> float:
    pg_restore = tools.tool_path("pg_restore", pg_bin_dir)
    check_extensions(target, required_extensions(pg_restore, dump_file))
    argv = [
        pg_restore,
        f"--jobs={jobs}",
        *([] if owners else ["--no-owner", "--no-privileges"]),
        f"--dbname={target.dbname}",
        dump_file,
    ]
    progress = staging.Progress(f"restore into {target.dbname}")
    with progress.watching(lambda: database_size(target)):
        tools.run(argv, target.libpq_env(), hint=f" restoring into {target.describe()}")
    return progress.seconds
