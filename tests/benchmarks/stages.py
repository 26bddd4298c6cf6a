"""One pg_backup stage per process, called directly (no scheduler), for the benchmark.

``python -m tests.benchmarks.stages <stage> <spec.json>`` runs one stage function the way its
Airflow task would, reading the records of earlier stages from the run's work directory and
writing its own next to them, so each stage's peak RSS is its own process's. Endpoints are
given here rather than looked up through Airflow connections (that lookup imports Airflow,
which is what scenario F measures), and the S3 client is a plain boto3 client.

Stages: dump, compress, encrypt, upload, restore, verify, dagtest (the whole DAG, dag.test()).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _load(spec: dict[str, Any]) -> tuple[Any, Any]:
    from pg_backup.config import load_config
    from pg_backup.layout import RunInfo

    cfg = load_config(Path(spec["config"])).target(spec["target"])
    return cfg, RunInfo(**spec["run"])


def _endpoints(spec: dict[str, Any]) -> None:
    """Resolve the two connection ids of the bench config without Airflow."""
    from pg_backup import restore, verify
    from pg_backup.pgconn import PgEndpoint

    known = {name: PgEndpoint(conn_id=name, **fields) for name, fields in spec["pg"].items()}

    def endpoint(conn_id: str) -> PgEndpoint:
        return known[conn_id]

    restore.endpoint = endpoint  # type: ignore[assignment]
    verify.endpoint = endpoint  # type: ignore[assignment]


def _store(spec: dict[str, Any], cfg: Any) -> Any:
    from pg_backup.storage import S3Storage, open_storage

    if not cfg.storage.url.startswith("s3://"):
        return open_storage(cfg.storage)
    import boto3

    store = S3Storage(cfg.storage.url, cfg.storage, cfg.storage.aws_conn_id)
    store._client = boto3.client(
        "s3",
        endpoint_url=spec["s3_endpoint"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    chunk = cfg.storage.multipart_chunksize

    def s3_form(parsed: dict[str, Any], **_: Any) -> None:
        # moto 5.2 reports a multipart object's composite ChecksumSHA256 without the "-<parts>"
        # suffix S3 appends; add it so put_file's check compares like with like (and still
        # proves the composite hash).
        value, size = parsed.get("ChecksumSHA256"), parsed.get("ContentLength", 0)
        if value and "-" not in value and size >= chunk:
            parsed["ChecksumSHA256"] = f"{value}-{-(-size // chunk)}"

    store._client.meta.events.register("after-call.s3.HeadObject", s3_form)
    return store


def _record(spec: dict[str, Any], name: str) -> Any:
    return json.loads((Path(spec["records"]) / f"{name}.json").read_text())


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one stage; return its XCom-like record."""
    cfg, run = _load(spec)
    if stage == "dump":
        from pg_backup.dump import run_dump
        from pg_backup.pgconn import PgEndpoint

        source = PgEndpoint(conn_id=cfg.source_conn_id, **spec["pg"][cfg.source_conn_id])
        return run_dump(cfg, run, source=source).to_xcom()
    if stage == "compress":
        from pg_backup.compress import compress_dump
        from pg_backup.staging import StagedFile

        staged = StagedFile.from_xcom(_record(spec, "dump")["dump"])
        return compress_dump(cfg, run, staged).to_xcom()
    if stage == "encrypt":
        from pg_backup.encrypt import encrypt_set
        from pg_backup.staging import StagedFile

        data, tables = encrypt_set(
            cfg,
            run,
            StagedFile.from_xcom(_record(spec, "compress")),
            StagedFile.from_xcom(_record(spec, "dump")["tables"]),
        )
        return {"data": data.to_xcom(), "tables": tables.to_xcom()}
    if stage == "upload":
        from pg_backup.dump import DumpResult
        from pg_backup.staging import StagedFile
        from pg_backup.upload import upload_set

        encrypted = _record(spec, "encrypt")
        return upload_set(
            cfg,
            run,
            DumpResult.from_xcom(_record(spec, "dump")),
            StagedFile.from_xcom(encrypted["data"]),
            StagedFile.from_xcom(encrypted["tables"]),
            store=_store(spec, cfg),
        ).to_xcom()
    if stage == "restore":
        from pg_backup.dump import DumpResult
        from pg_backup.restore import restore_staged

        _endpoints(spec)
        dumped = DumpResult.from_xcom(_record(spec, "dump"))
        return restore_staged(cfg, run, dumped.dump, spec["database"]).to_xcom()
    if stage == "verify":
        from pg_backup.dump import DumpResult
        from pg_backup.verify import verify_counts

        _endpoints(spec)
        restored = _record(spec, "restore")
        record = verify_counts(
            cfg,
            run,
            DumpResult.from_xcom(_record(spec, "dump")),
            restored["database"],
            restored["seconds"],
            store=_store(spec, cfg),
        )
        return record.model_dump(mode="json")
    if stage == "dagtest":
        return _dag_test(spec, cfg)
    raise SystemExit(f"unknown stage {stage!r}")


def _dag_test(spec: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The whole backup DAG under dag.test(): every task in this process, as Airflow runs it."""
    from datetime import datetime

    from airflow.utils.session import create_session

    from pg_backup.dag_factory import build_backup_dag

    when = datetime.fromisoformat(spec["run_after"])
    dag_run = build_backup_dag(cfg, "scheduled").test(run_after=when, logical_date=when)
    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}
    if set(states.values()) != {"success"}:
        raise SystemExit(f"dag.test() did not succeed: {states}")
    return {"state": str(dag_run.state), "tasks": states}


def _hwm() -> int:
    """This process's peak RSS in bytes (its own address space only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    stage, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    started = time.monotonic()
    record = run_stage(stage, spec)
    seconds = time.monotonic() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    (Path(spec["records"]) / f"{stage}.json").write_text(json.dumps(record))
    (Path(spec["records"]) / f"{stage}.cost.json").write_text(
        json.dumps(
            {
                "stage_seconds": seconds,
                # VmHWM, not ru_maxrss: the latter includes the image of the parent that forked us.
                "self_hwm": _hwm(),
                "self_cpu": own.ru_utime + own.ru_stime,
                "children_cpu": kids.ru_utime + kids.ru_stime,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
