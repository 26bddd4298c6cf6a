"""One task's resources, resolved once: the per-task runtime every stage receives.

Like a provider hook's ``get_conn()``, each resource is looked up on first use and then kept,
so a task resolves each Airflow connection at most once, opens storage once and parses keys
once. Tests and the command line pass resources in directly.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pg_backup.adapters.databases import Databases
from pg_backup.adapters.pgconn import PgEndpoint, endpoint, get_connection
from pg_backup.adapters.run_staging import RunStaging, open_run_staging
from pg_backup.adapters.storage import Storage, open_storage
from pg_backup.core import keys, layout
from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import ConnectionConfigError, PgBackupError
from pg_backup.core.layout import RunInfo
from pg_backup.core.manifest import Manifest, SourceIdentity


class Runtime:
    """The target's config, the run (for backup DAGs), and lazily resolved resources.

    :param cfg: the target's config
    :param run: the backup run this task belongs to (None outside backup DAGs)
    :param resources: resolved resources to use instead of looking them up: ``source``,
        ``scratch`` (PgEndpoint), ``storage`` (Storage), ``identities`` (list of private keys)
    """

    def __init__(self, cfg: TargetConfig, run: RunInfo | None = None, **resources: Any):
        self.cfg = cfg
        self._run = run
        unknown = set(resources) - {"source", "scratch", "storage", "identities", "staging"}
        if unknown:
            raise TypeError(f"unknown resources {sorted(unknown)}")
        self.__dict__.update(resources)  # pre-empts the cached properties below

    def at(self, destination: str) -> Runtime:
        """A runtime with one destination as its storage, and that destination's retention.

        A target with one destination gets itself back (same resources, same storage).

        :raises ConfigError: the target has no such destination
        """
        if [d.name for d in self.cfg.destinations] == [destination]:
            return self
        shared = {
            name: self.__dict__[name]
            for name in ("source", "scratch", "identities")
            if name in self.__dict__
        }
        return Runtime(self.cfg.for_destination(destination), self._run, **shared)

    @property
    def run(self) -> RunInfo:
        """The backup run (only backup DAG tasks have one)."""
        if self._run is None:
            raise RuntimeError("this task belongs to no backup run")
        return self._run

    @cached_property
    def source(self) -> PgEndpoint:
        """The database backed up (``source_conn_id``)."""
        return endpoint(self.cfg.source_conn_id)

    @cached_property
    def scratch(self) -> PgEndpoint:
        """The server verification and drill databases are made on (``scratch_conn_id``)."""
        return endpoint(self.cfg.scratch_conn_id)

    @cached_property
    def scratch_databases(self) -> Databases:
        """Create/drop on the scratch server; the source database is refused on every call.

        In a backup run, the source identity its manifest recorded tells the source apart when
        the source itself stopped answering after the dump.
        """
        return Databases(self.scratch, self.source, self._recorded_source)

    def _recorded_source(self) -> SourceIdentity | None:
        """The source identity in this run's manifest, if the run has one in storage yet."""
        if self._run is None:
            return None
        try:
            key = self._run.prefix + layout.MANIFEST_OBJECT
            return Manifest.from_bytes(self.storage.get_bytes(key)).source
        except (PgBackupError, ValueError):
            return None

    @cached_property
    def drill_server(self) -> PgEndpoint:
        """Where drills restore: the standby server (``drill.standby_conn_id``), else scratch."""
        conn_id = self.cfg.drill.standby_conn_id
        return endpoint(conn_id) if conn_id else self.scratch

    @cached_property
    def drill_databases(self) -> Databases:
        """Create/drop on the drill's server; the source database is refused on every call."""
        return Databases(self.drill_server, self.source)

    @cached_property
    def staging(self) -> RunStaging:
        """Where the run's stages hand files over: ``staging_url`` if set, else ``staging_dir``."""
        return open_run_staging(self.cfg, self.run)

    @cached_property
    def storage(self) -> Storage:
        """Where the target's sets live."""
        return open_storage(self.cfg.storage)

    @cached_property
    def sweep_storage(self) -> Storage:
        """The same storage through the sweeper's credentials (``sweep_aws_conn_id``)."""
        return open_storage(self.cfg.storage, for_delete=True)

    @cached_property
    def recipients(self) -> list[Any]:
        """The configured public keys, parsed (pyrage recipients)."""
        return keys.parse_recipients(list(self.cfg.encryption.recipients))

    @cached_property
    def identities(self) -> list[str]:
        """Private keys from the identity connection's password (one per line for rotation)."""
        conn_id = self.cfg.encryption.identity_conn_id
        found = keys.split_identities(get_connection(conn_id).password or "")
        if not found:
            raise ConnectionConfigError(
                f"connection {conn_id!r} holds no age private key: put AGE-SECRET-KEY-1... (one "
                "per line when rotating keys) in its password field"
            )
        return found
