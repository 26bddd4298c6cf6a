"""pg_restore, wrapped once: the extensions a dump needs, then ``pg_restore -j`` into a database.

Event triggers are kept from firing while the restore builds the database: they are left out
of the ``pg_restore -j`` run and created afterwards, alone, when nothing else is left to
restore (pg_dump orders them before the REFRESH of materialized views, and in a parallel
restore a DDL-audit trigger could otherwise fire on a refresh and add a row). A login that may
not create them (creating an event trigger needs a superuser) restores everything else; the
verification names them as not restorable by that login.

A caller may have work done while the post-data section builds indexes and keys
(``while_indexing``): that section is then restored in four runs (``plan_post_data``): the keys
and rules, which lock their table against reading; then, beside the caller's work, what takes
no lock that blocks a reader and cannot change a row (indexes, foreign keys, triggers); then the
rest (row security, policies, comments, publications); then the event triggers. Dumps whose
post-data section runs code that may write (a materialized view's refresh, a separately added
CHECK constraint) and entries of kinds not known here are restored as one run, and the work is
not done.

Any error fails with pg_restore's own messages; the password travels in the child's environment.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


_ENTRY = re.compile(r"^\s*(\d+);\s+\d+\s+\d+\s+(.*)$")
# Post-data entries whose restore cannot change a row of any table: PostgreSQL runs no user
# code that may write (index expressions and predicates must be IMMUTABLE, foreign keys are
# checked by its own queries, triggers and rules only fire on later statements).
# Keys (PRIMARY KEY, UNIQUE, EXCLUDE) and rules take ACCESS EXCLUSIVE on their table: a reader
# holding the table would stall them, and pg_restore schedules no index of that table until
# they are done. They are restored first, in a run of their own.
_BEFORE = ("CONSTRAINT", "RULE")
# CREATE INDEX takes SHARE, ADD FOREIGN KEY and CREATE TRIGGER SHARE ROW EXCLUSIVE, ATTACH
# PARTITION of an index and CREATE STATISTICS SHARE UPDATE EXCLUSIVE: none blocks a reader
# (ACCESS SHARE), so these run beside the caller's reading.
_BESIDE = ("INDEX ATTACH", "INDEX", "FK CONSTRAINT", "TRIGGER", "STATISTICS")
# Restored after the caller's work: they change what a reading session sees (row security),
# or need an object of the first run (comments, labels), or are not needed to read tables.
_AFTER = (
    "ROW SECURITY",
    "POLICY",
    "COMMENT",
    "SECURITY LABEL",
    "PUBLICATION",
    "SUBSCRIPTION",
    "ACL",
    "DEFAULT ACL",
)


@dataclass(frozen=True)
class PostDataPlan:
    """A table of contents as restore runs, each a list of ``pg_restore --list`` lines.

    ``first``: pre-data and data; ``keys``: keys and rules (they lock out readers);
    ``beside``: post-data entries restored while the caller works; ``after``: the rest of
    post-data; ``triggers``: event triggers, last.
    """

    first: list[str]
    keys: list[str]
    beside: list[str]
    after: list[str]
    triggers: list[str]


def _kind(line: str) -> str:
    match = _ENTRY.match(line)
    return match.group(2) if match else ""


def plan_post_data(toc: str, post_data: str) -> PostDataPlan | str:
    """Split a table of contents for work done beside the post-data section, or say why not.

    :param toc: ``pg_restore --list`` of the dump
    :param post_data: ``pg_restore --list --section=post-data`` of the same dump
    :returns: the plan, or the reason no work may be done beside it (the entry that may write,
        or one of an unknown kind), naming the entry
    """
    post = {m.group(1) for m in map(_ENTRY.match, post_data.splitlines()) if m}
    rest, triggers = split_event_triggers(toc)
    first: list[str] = []
    keys: list[str] = []
    beside: list[str] = []
    after: list[str] = []
    for line in rest:
        match = _ENTRY.match(line)
        if match is None or match.group(1) not in post:
            first.append(line)
            continue
        kind = match.group(2)
        if kind.startswith(_BESIDE):
            beside.append(line)
        elif kind.startswith(_BEFORE):
            keys.append(line)
        elif kind.startswith(_AFTER):
            after.append(line)
        elif kind.startswith("MATERIALIZED VIEW DATA"):
            return (
                f"the dump refreshes a materialized view ({kind}), which may run code that writes"
            )
        else:
            return f"the post-data section holds an entry of a kind not planned for ({kind})"
    return PostDataPlan(first, keys, beside, after, triggers)


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
    while_indexing: Callable[[], Any] | None = None,
) -> float:
    """pg_restore -j into an existing empty database; return the seconds it took.

    ``dump_file`` is a custom-format file, a directory-format dump, or a tar of one (unpacked
    next to it for the restore, and removed afterwards; the time includes the unpacking).
    ``owners``: keep the dump's owners and grants (every role they name must exist); without,
    ``--no-owner --no-privileges``. ``while_indexing``: called once the tables hold their
    rows, while indexes and keys are built, when ``plan_post_data`` allows (its result and
    exceptions are the caller's; a pg_restore failure wins over them); not called otherwise.

    :raises ToolFailed: pg_restore reported an error (its messages are in the exception)
    :raises RestoreError: the target server lacks an extension the dump needs
    """
    path = Path(dump_file)
    if path.is_file() and dump_format_of(path) == "directory":
        started = time.monotonic()
        unpacked = unpack_dump(path, path.with_name(path.name + ".d"))
        try:
            seconds = _pg_restore(target, str(unpacked), jobs, pg_bin_dir, owners, while_indexing)
            return time.monotonic() - started + seconds
        finally:
            staging.remove_dir(unpacked)
    return _pg_restore(target, dump_file, jobs, pg_bin_dir, owners, while_indexing)


def _pg_restore(
    target: PgEndpoint,
    dump_file: str,
    jobs: int,
    pg_bin_dir: str | None,
    owners: bool,
    while_indexing: Callable[[], Any] | None,
) -> float:
    pg_restore = tools.tool_path("pg_restore", pg_bin_dir)
    toc = tools.run([pg_restore, "--list", dump_file], {})
    check_extensions(target, extensions_in(toc))
    rest, triggers = split_event_triggers(toc)
    plan: PostDataPlan | str = "nothing to do beside the post-data section"
    if while_indexing is not None:
        post = tools.run([pg_restore, "--list", "--section=post-data", dump_file], {})
        plan = plan_post_data(toc, post)
        if isinstance(plan, str):
            log.info("restore: in one run, then the tables are read: %s", plan)
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
        lists = Path(tmp)

        def restore(name: str, entries: list[str], parallel: bool = True, why: str = "") -> None:
            (lists / name).write_text("\n".join(entries) + "\n")
            tools.run(
                [
                    *base,
                    *([f"--jobs={jobs}"] if parallel else []),
                    f"--use-list={lists / name}",
                    dump_file,
                ],
                target.libpq_env(),
                hint=hint + why,
            )

        if isinstance(plan, PostDataPlan) and while_indexing is not None:
            restore("first.list", plan.first)
            if plan.keys:
                restore("keys.list", plan.keys)
            with ThreadPoolExecutor(1, thread_name_prefix="pg_restore") as pool:
                building = pool.submit(restore, "beside.list", plan.beside) if plan.beside else None
                try:
                    while_indexing()
                finally:
                    if building is not None:
                        building.result()  # pg_restore's failure wins over the caller's
            if plan.after:
                restore("after.list", plan.after)
        elif not triggers:
            tools.run([*base, f"--jobs={jobs}", dump_file], target.libpq_env(), hint=hint)
            return progress.seconds
        else:
            restore("rest.list", rest)
        if triggers and may_create_event_triggers(target):
            restore("triggers.list", triggers, False, " (event triggers, created last)")
        elif triggers:
            log.warning(
                "restore: %d event trigger entr(ies) not restored: the login %r may not create "
                "event triggers (a superuser may); the verification names them",
                len(triggers),
                target.user,
            )
    return progress.seconds
