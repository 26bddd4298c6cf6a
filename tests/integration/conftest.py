"""A harness that runs the real backup DAGs under ``dag.test()`` against real services."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AgeKeys, MailSink, S3Server, pg_conn_json, psql
from tests.second_cluster import second_cluster  # noqa: F401 (a fixture: the worst-day server)

# A schema that exercises what breaks naive backup scripts: quoted mixed case, spaces and
# non-ASCII in names, two schemas, a partitioned table, a materialized view, a table without
# a primary key, large objects and TOASTed bytea.
RICH_SCHEMA = r"""
CREATE SCHEMA "Élection Data";
CREATE TABLE public."User" (id serial PRIMARY KEY, "fullName" text NOT NULL);
CREATE TABLE public."Candidate" (id serial PRIMARY KEY, "Name" text);
CREATE TABLE public."Vote" (
    id bigserial PRIMARY KEY,
    "userId" int REFERENCES public."User",
    "candidateId" int REFERENCES public."Candidate",
    "castAt" timestamptz NOT NULL DEFAULT now());
CREATE TABLE "Élection Data"."Audit Log" ("at" timestamptz DEFAULT now(), "entry" jsonb);
CREATE TABLE "Élection Data"."bulletins_ü" ("day" date NOT NULL, n int)
    PARTITION BY RANGE ("day");
CREATE TABLE "Élection Data"."bulletins_ü_2026a" PARTITION OF "Élection Data"."bulletins_ü"
    FOR VALUES FROM ('2026-01-01') TO ('2026-07-01');
CREATE TABLE "Élection Data"."bulletins_ü_2026b" PARTITION OF "Élection Data"."bulletins_ü"
    FOR VALUES FROM ('2026-07-01') TO ('2027-01-01');
CREATE TABLE public.photos (id int PRIMARY KEY, img bytea, note_oid oid);
INSERT INTO public."User" ("fullName") SELECT 'user ' || i FROM generate_series(1, 500) i;
INSERT INTO public."Candidate" ("Name") SELECT 'cand ' || i FROM generate_series(1, 7) i;
INSERT INTO public."Vote" ("userId", "candidateId")
    SELECT 1 + i % 500, 1 + i % 7 FROM generate_series(1, 3000) i;
INSERT INTO "Élection Data"."Audit Log" ("entry")
    SELECT jsonb_build_object('i', i, 'event', 'vote') FROM generate_series(1, 1200) i;
INSERT INTO "Élection Data"."bulletins_ü" SELECT DATE '2026-01-01' + (i % 365), i
    FROM generate_series(1, 800) i;
INSERT INTO public.photos SELECT i,
    (SELECT string_agg(decode(md5(i::text || g::text), 'hex'), ''::bytea)
       FROM generate_series(1, 4000) g),
    lo_from_bytea(0, convert_to('large object ' || i, 'UTF8'))
    FROM generate_series(1, 6) i;
CREATE MATERIALIZED VIEW public."Results" AS
    SELECT "candidateId", count(*) AS votes FROM public."Vote" GROUP BY 1;
"""


@dataclass
class Harness:
    """One backup target wired to real services, run through dag.test()."""

    name: str
    source_db: str
    config_path: Path
    storage_url: str
    age: AgeKeys
    staging_dir: Path
    s3: S3Server | None = None
    mail: MailSink | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _clock: datetime = field(
        default_factory=lambda: (
            datetime(2026, 1, 1, 2, 0, tzinfo=UTC) + timedelta(minutes=uuid.uuid4().int % 100000)
        )
    )

    def config_doc(self) -> dict[str, Any]:
        target: dict[str, Any] = {
            "source_conn_id": f"pgb_src_{self.name}",
            "scratch_conn_id": "pgb_test_scratch",
            "staging_dir": str(self.staging_dir),
            "storage": {"url": self.storage_url, "aws_conn_id": "pgb_test_aws"},
            "encryption": {"recipients": [self.age.public]},
            "retries": 2,
            "retry_delay": "1s",
            "max_retry_delay": "2s",
            "alerts": {"emails": ["dba@test.invalid"], "smtp_conn_id": "pgb_test_smtp"},
        }
        merged = _merge(target, self.overrides)
        if "destinations" in self.overrides:  # several destinations replace the one storage
            merged.pop("storage")
        return {"targets": {self.name: merged}}

    def write_config(self, **overrides: Any) -> Any:
        from pg_backup.core.config import load_config

        self.overrides = _merge(self.overrides, overrides)
        self.config_path.write_text(yaml.safe_dump(self.config_doc()))
        os.environ["PG_BACKUP_CONFIG"] = str(self.config_path)
        return load_config(self.config_path).target(self.name)

    def dag(self, kind: str = "scheduled") -> Any:
        from pg_backup.dags.backup import build_backup_dag

        return build_backup_dag(self.write_config(), kind)  # type: ignore[arg-type]

    def run(self, kind: str = "scheduled", conf: dict[str, Any] | None = None) -> Any:
        """Run the DAG once through dag.test() at a fresh run time; return the DagRun."""
        self._clock += timedelta(hours=1)
        dag = self.dag(kind)
        return dag.test(run_after=self._clock, logical_date=self._clock, run_conf=conf)

    def run_info(self, kind: str = "scheduled") -> Any:
        """A RunInfo as the DAG would derive it, for driving stage functions directly."""
        from pg_backup.core import layout

        self._clock += timedelta(hours=1)
        backup = layout.backup_id(self.name, self._clock, kind)  # type: ignore[arg-type]
        return layout.RunInfo(
            target=self.name,
            kind=kind,  # type: ignore[arg-type]
            backup_id=backup,
            taken_at=self._clock.isoformat(),
            dag_id=f"pg_backup_{self.name}",
            run_id=f"manual__{self._clock.isoformat()}",
            staging=str(self.staging_dir / self.name / backup),
        )

    def storage(self) -> Any:
        from pg_backup.adapters.storage import open_storage

        return open_storage(self.write_config().storage)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def task_states(dag_run: Any) -> dict[str, str]:
    """task_id -> final state of a DagRun returned by dag.test()."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def xcoms(dag_run: Any) -> dict[str, Any]:
    """task_id -> return value XCom of a DagRun."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .all()
        )
        return {row.task_id: row.value for row in rows if row.key == "return_value"}


def objects(storage: Any, prefix: str = "") -> dict[str, int]:
    """key -> size of everything in a storage below a prefix (preflight marker, index excluded)."""
    return {
        o.key: o.bytes
        for o in storage.list(prefix)
        if not o.key.endswith(("/.preflight", "/catalog.json"))
    }


@pytest.fixture
def scratch_conn(pg_server: None) -> None:
    os.environ["AIRFLOW_CONN_PGB_TEST_SCRATCH"] = pg_conn_json("postgres")


@pytest.fixture
def harness_factory(
    make_db: Any,
    age_keys: AgeKeys,
    airflow_db: Path,
    tmp_path: Path,
    scratch_conn: None,
    s3_server: S3Server,
    smtp_sink: MailSink,
) -> Iterator[Any]:
    """Build harnesses: a fresh source database each, file:// or s3:// storage."""
    made: list[Harness] = []

    def make(storage: str = "file", schema: str = RICH_SCHEMA, name: str | None = None) -> Harness:
        name = name or f"t{uuid.uuid4().hex[:8]}"
        db = make_db("pgbt_src")
        if schema:
            psql(schema, db)
        os.environ[f"AIRFLOW_CONN_PGB_SRC_{name.upper()}"] = pg_conn_json(db)
        if storage == "s3":
            url = f"s3://{s3_server.new_bucket()}/backups"
        else:
            url = f"file://{tmp_path / ('storage-' + name)}"
        harness = Harness(
            name=name,
            source_db=db,
            config_path=tmp_path / f"pg_backup-{name}.yaml",
            storage_url=url,
            age=age_keys,
            staging_dir=tmp_path / f"staging-{name}",
            s3=s3_server,
            mail=smtp_sink,
        )
        harness.write_config()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        for row in psql(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgb\\_verify\\_"
            f"{harness.name}\\_%'"
        ).splitlines():
            psql(f'DROP DATABASE IF EXISTS "{row}" WITH (FORCE)')
