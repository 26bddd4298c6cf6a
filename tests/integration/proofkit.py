"""Drive the dump, restore and proof stage functions directly on a real source (no DAG run).

Each test module makes its source and its dump once; each test restores that dump into a
database of its own and proves it, so a corruption in one test never leaks into another.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql


def sql(query: str, dbname: str = "postgres", port: int = PG_PORT, user: str = PG_USER) -> str:
    """Run SQL through psql (any cluster of this machine, any login) and return its output."""
    return psql(query, dbname, port, user)


def endpoint(dbname: str, user: str = PG_USER, port: int = PG_PORT, host: str = PG_HOST) -> Any:
    from pg_backup.adapters.pgconn import PgEndpoint

    return PgEndpoint("pgbt", host, port, user, dbname)


def target_config(name: str, staging: Path, recipient: str, **overrides: Any) -> Any:
    """A target config as a stage sees it (connections are passed in, not looked up)."""
    from pg_backup.core.config import parse_config

    target = {
        "source_conn_id": "pgbt_source",
        "scratch_conn_id": "pgbt_scratch",
        "staging_dir": str(staging),
        "storage": {"url": f"file://{staging}/storage"},
        "encryption": {"recipients": [recipient]},
        **overrides,
    }
    return parse_config({"targets": {name: target}}).target(name)


@dataclass
class Dumped:
    """One dump of a source, made by the real dump stage, and its table document."""

    rt: Any
    result: Any
    doc: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.rt.run.staging_path / self.result.dump.name

    def restore(self, dbname: str, login: str = PG_USER, port: int = PG_PORT) -> Any:
        """A new database holding this dump (restored by the restore adapter); its endpoint."""
        from pg_backup.adapters.pg_restore import restore_dump

        sql(f'CREATE DATABASE "{dbname}" OWNER "{login}"', port=port)
        target = endpoint(dbname, login, port)
        restore_dump(target, str(self.path), 2)
        return target

    @contextmanager
    def restored(self, login: str = PG_USER, port: int = PG_PORT) -> Iterator[Any]:
        """A restore of this dump into a new database, dropped afterwards; its endpoint."""
        name = f"pgbt_restored_{uuid.uuid4().hex[:8]}"
        try:
            yield self.restore(name, login, port)
        finally:
            sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', port=port)

    def prove(self, target: Any) -> Any:
        """The proof of a restored database against this dump's snapshot."""
        from pg_backup.stages.verify import prove_database

        return prove_database(target, self.doc, self.rt.cfg)


def dump(
    source_db: str,
    staging: Path,
    recipient: str,
    port: int = PG_PORT,
    login: str = PG_USER,
    **cfg: Any,
) -> Dumped:
    """Run the real dump stage once against ``source_db`` as ``login``."""
    from pg_backup.core import layout
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.runtime import Runtime

    name = f"t{uuid.uuid4().hex[:8]}"
    config = target_config(name, staging, recipient, **cfg)
    taken = datetime.now(UTC).replace(microsecond=0)
    backup = layout.backup_id(name, taken, "scheduled")
    run = layout.RunInfo(
        target=name,
        kind="scheduled",
        backup_id=backup,
        taken_at=taken.isoformat(),
        dag_id=f"pg_backup_{name}",
        run_id=f"manual__{taken.isoformat()}",
        staging=str(staging / name / backup),
    )
    rt = Runtime(
        config,
        run,
        source=endpoint(source_db, login, port),
        scratch=endpoint("postgres", port=port),
    )
    result = run_dump(rt)
    doc = json.loads((run.staging_path / result.tables.name).read_text())
    return Dumped(rt, result, doc)
