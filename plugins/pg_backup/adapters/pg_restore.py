"""pg_restore, wrapped once: the extensions a dump needs, then ``pg_restore -j`` into a database.

Event triggers are kept from firing while the restore builds the database: they are left out
of the ``pg_restore -j`` run and created afterwards, alone, when nothing else is left to
restore (pg_dump orders them before the REFRESH of materialized views, and in a parallel
restore a DDL-audit trigger could otherwise fire on a refresh and add a row). A login that may
not create them (creating an event trigger needs a superuser) restores everything else; the
verification names them as not restorable by that login.

Any error fails with pg_restore's own messages; the password travels in the child's environment.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path

from pg_backup.adapters import staging, tools
from pg_backup.adapters.archive import dump_format_of, unpack_dump
from pg_backup.adapters.databases import database_size
from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.core.errors import RestoreError

log = logging.getLogger(__name__)

_EXTENSION = re.compile(r"^\d+;\s+\d+\s+\d+\s+EXTENSION\s+-\s+(\S+)", re.M)
# An event trigger's own entry, and its comment or security label (they need it to exist).
_EVENT_TRIGGER = re.compile(
    r"^\d+;\s+\d+\s+\d+\s+(?:EVENT TRIGGER\s+-\s+|(?:COMMENT|SECURITY LABEL)\s+-\s+"
    r"EVENT TRIGGER\s+)"
)


def required_extensions(pg_restore: str, dump_file: str) -> list[str]:
    """Extensions the dump will CREATE, read from its table of contents."""
    return extensions_in(tools.run([pg_restore, "--list", dump_file], {}))


def extensions_in(toc: str) -> list[str]:
    """Extensions a table of contents (``pg_restore --list``) will CREATE."""
    return sorted(set(_EXTENSION.findall(toc)))


def split_event_triggers(toc: str) -> tuple[list[str], list[str]]:
    """A table of contents as two restore lists: everything else, and the event triggers."""
    rest: list[str] = []
    triggers: list[str] = []
    for line in toc.splitlines():
        (triggers if _EVENT_TRIGGER.match(line) else rest).append(line)
    return rest, triggers


def may_create_event_triggers(target: PgEndpoint) -> bool:
    """Whether the login of ``target`` may create event triggers (a superuser)."""
    with target.connect(autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


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
    toc = tools.run([pg_restore, "--list", dump_file], {})
    check_extensions(target, extensions_in(toc))
    rest, triggers = split_event_triggers(toc)
    # With owners: the roles exist (created first from the set's globals), so ownership and
    # grants are restored as they were; without, the restoring login owns everything.
    base = [
        pg_restore,
        *([] if owners else ["--no-owner", "--no-privileges"]),
        f"--dbname={target.dbname}",
    ]
    hint = f" restoring into {target.describe()}"
    progress = staging.Progress(f"restore into {target.dbname}")
    with (
        progress.watching(lambda: database_size(target)),
        tempfile.TemporaryDirectory(prefix="pgb-restore-") as tmp,
    ):
        if not triggers:
            tools.run([*base, f"--jobs={jobs}", dump_file], target.libpq_env(), hint=hint)
            return progress.seconds
        lists = Path(tmp)
        (lists / "rest.list").write_text("\n".join(rest) + "\n")
        tools.run(
            [*base, f"--jobs={jobs}", f"--use-list={lists / 'rest.list'}", dump_file],
            target.libpq_env(),
            hint=hint,
        )
        if may_create_event_triggers(target):
            (lists / "triggers.list").write_text("\n".join(triggers) + "\n")
            tools.run(
                [*base, f"--use-list={lists / 'triggers.list'}", dump_file],
                target.libpq_env(),
                hint=hint + " (event triggers, created last)",
            )
        else:
            log.warning(
                "restore: %d event trigger entr(ies) not restored: the login %r may not create "
                "event triggers (a superuser may); the verification names them",
                len(triggers),
                target.user,
            )
    return progress.seconds
