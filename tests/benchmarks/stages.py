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

from tests.benchmarks.moto_client import bench_s3_client


def _load(spec: dict[str, Any]) -> tuple[Any, Any]:
    from pg_backup.core.config import load_config
    from pg_backup.core.layout import RunInfo

    cfg = load_config(Path(spec["config"])).target(spec["target"])
    return cfg, RunInfo.from_xcom(spec["run"])


def _store(spec: dict[str, Any], cfg: Any) -> Any:
    from pg_backup.adapters.storage import S3Storage, open_storage

    if not cfg.storage.url.startswith("s3://"):
        return open_storage(cfg.storage)
    store = S3Storage(cfg.storage.url, cfg.storage, cfg.storage.aws_conn_id)
    store._client = bench_s3_client(spec["s3_endpoint"])
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


def _runtime(spec: dict[str, Any], cfg: Any, run: Any) -> Any:
    """The stage's resources, given directly: endpoints from the spec, a plain boto3 client."""
    from pg_backup.adapters.pgconn import PgEndpoint
    from pg_backup.stages.runtime import Runtime

    known = {name: PgEndpoint(conn_id=name, **fields) for name, fields in spec["pg"].items()}
    return Runtime(
        cfg,
        run,
        source=known[cfg.source_conn_id],
        scratch=known[cfg.scratch_conn_id],
        storage=_store(spec, cfg),
    )


def run_stage(stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one stage; return its XCom-like record."""
    from pg_backup.core.records import DumpResult, EncryptResult, RestoreResult, StagedFile

    cfg, run = _load(spec)
    if stage == "dagtest":
        return _dag_test(spec, cfg)
    rt = _runtime(spec, cfg, run)
    if stage == "dump":
        from pg_backup.stages.dump import run_dump

        return run_dump(rt).to_xcom()
    dumped = DumpResult.from_xcom(_record(spec, "dump"))
    if stage == "compress":
        from pg_backup.stages.compress import compress_dump

        return compress_dump(rt, dumped.dump).to_xcom()
    if stage == "encrypt":
        from pg_backup.stages.encrypt import encrypt_set

        return encrypt_set(
            rt, StagedFile.from_xcom(_record(spec, "compress")), dumped.tables
        ).to_xcom()
    if stage == "upload":
        from pg_backup.stages.upload import upload_set

        return upload_set(rt, dumped, EncryptResult.from_xcom(_record(spec, "encrypt"))).to_xcom()
    if stage == "restore":
        from pg_backup.stages.restore import restore_staged

        # The bench made the database: restored into as it is, like the DAG's restore.
        return restore_staged(
            rt, dumped, spec["database"], made_in=dumped.database or dumped.encoding
        ).to_xcom()
    if stage == "verify":
        from pg_backup.stages.verify import verify_restore

        restored = RestoreResult.from_xcom(_record(spec, "restore"))
        return verify_restore(rt, dumped, restored).model_dump(mode="json")
    raise SystemExit(f"unknown stage {stage!r}")


def _dag_test(spec: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The whole backup DAG under dag.test(): every task in this process, as Airflow runs it."""
    from datetime import datetime

    from airflow.utils.session import create_session

    from pg_backup.dags.backup import build_backup_dag

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
