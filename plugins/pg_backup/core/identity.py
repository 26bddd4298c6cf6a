"""Is this database the source? Decided from what the servers say about themselves.

A host name proves nothing: ``vm``, ``127.0.0.1``, ``hostaddr=...``, a DNS alias, a port
forward or a pooler all reach the same server under other spellings. What the servers report
does prove it:

* the **session probe**: the source connection is opened under a unique ``application_name``;
  if the other server lists that session in ``pg_stat_activity`` (every login may read the
  ``application_name`` and ``datid`` of every session), both connections reach one server;
* the **system identifier** (``pg_control_system()``) and the server's **port**: equal on both
  means the same cluster, or a physical copy of it (which we refuse just as well);
* the **database oid** inside that cluster.

Pure logic: the adapters read these facts over real connections (``adapters.pgconn``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_backup.core.manifest import SourceIdentity


@dataclass(frozen=True)
class TargetFacts:
    """What the server that would be touched says about itself and the database at stake.

    :param system_identifier: None when the login may not call ``pg_control_system()``
    :param port: the server's ``port`` setting
    :param database: the database that would be created, restored into or dropped
    :param database_oid: its oid there, None when no such database exists
    :param probe_seen: True when the source's probe session is listed on this server, False
        when it is not (and the listing is known to show other sessions), None when there was
        no probe (no live source) or the listing proves nothing
    """

    system_identifier: str | None
    port: int
    database: str
    database_oid: int | None
    probe_seen: bool | None = None


@dataclass(frozen=True)
class Verdict:
    """``is_source``: True (it is), False (proven not), None (cannot tell); ``why`` says how."""

    is_source: bool | None
    why: str


def judge(source: SourceIdentity | None, target: TargetFacts, live: bool) -> Verdict:
    """Decide whether ``target`` is the source database.

    :param source: the source's identity, read just now over its connection (``live``) or
        recorded in a set's manifest at backup time; None when neither is known
    :param live: False when ``source`` comes from a manifest: that database may have been
        recreated since (new oid), so on the source's cluster its *name* is refused too
    """
    if target.database_oid is None:
        return Verdict(False, f"database {target.database!r} does not exist there yet")
    if source is None:
        return Verdict(None, "the source's identity is unknown")
    if target.probe_seen:
        same_cluster: bool | None = True
        how = "the source's own session is listed on that server"
    elif source.system_identifier and target.system_identifier:
        same_cluster = (
            source.system_identifier == target.system_identifier and source.port == target.port
        )
        how = f"system identifier {target.system_identifier} and port {target.port}" + (
            " are the source's" if same_cluster else " differ from the source's"
        )
    elif target.probe_seen is False:
        same_cluster = False
        how = "the source's session is not listed on that server"
    else:
        return Verdict(
            None,
            "the login may not read the system identifier (pg_control_system()) of both "
            "servers, and no session probe could be made",
        )
    if not same_cluster:
        return Verdict(False, f"another server: {how}")
    if target.database_oid == source.database_oid:
        oid = target.database_oid
        return Verdict(True, f"the same server ({how}) and the same database oid {oid}")
    if not live and target.database == source.database:
        return Verdict(True, f"the same server ({how}) and the source's database name")
    return Verdict(False, f"the source's server ({how}) but another database")
