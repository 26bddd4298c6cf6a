"""The real CeleryExecutor: two workers that share no disk, object-store staging, server pools.

One stack for this module: Redis broker (its own DB number and queue), a PostgreSQL metadata
database of its own, scheduler, dag-processor, triggerer, api-server, and two Celery workers
named ``worker-a`` and ``worker-b`` (``[core] hostname_callable``, ``--celery-hostname``),
each with its own ``staging_dir``. Targets ``c1``..``c3`` stage through the S3 test server
(``staging_url``); ``n1`` stages in each worker's own directory, which is not shared. All four
sources sit behind one source-server label with a pool of one slot.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    REPO,
    AgeKeys,
    MailSink,
    free_port,
    pg_conn_json,
    psql,
)
from tests.e2e.conftest import (
    SCRATCH_CONN_ID,
    Stack,
    _session_pids,
    _set_child_subreaper,
    airflow_env,
)
from tests.integration.conftest import RICH_SCHEMA

pytestmark = pytest.mark.e2e

OBJECT_STAGED = ("c1", "c2", "c3")
NOT_SHARED = "n1"
WORKERS = ("worker-a", "worker-b")
SOURCE_POOL = "pg_backup_source_e2e_source_5432"
START_TIMEOUT = 240.0
RUN_TIMEOUT = 600.0

LAUNCHER = """#!/usr/bin/env bash
# The components of deploy/airflow.sh, plus two Celery workers with their own config and name.
set -u
D={deploy}
"$D" init || exit 1
pids=()
stop() {{
  trap - INT TERM EXIT
  kill -TERM "${{pids[@]}}" 2>/dev/null || true
  sleep 3
  kill -KILL 0 2>/dev/null || true  # what ignored TERM (task processes, the triggerer)
}}
trap stop INT TERM EXIT
for c in scheduler dag-processor triggerer api-server; do
  "$D" "$c" >"$AIRFLOW_HOME/logs/$c.log" 2>&1 &
  pids+=("$!")
done
for w in a b; do
  PG_BACKUP_CONFIG="{root}/pg_backup-$w.yaml" PGB_E2E_HOSTNAME="worker-$w" \\
  PG_BACKUP_CELERY_HOSTNAME="worker-$w@%h" "$D" celery-worker \\
    >"$AIRFLOW_HOME/logs/worker-$w.log" 2>&1 &
  pids+=("$!")
done
wait -n "${{pids[@]}}"
echo "a component exited" >&2
exit 1
"""


def _config(root: Path, worker: str, age: AgeKeys, bucket: str, storage: Path) -> dict[str, Any]:
    return {
        "defaults": {
            "scratch_conn_id": SCRATCH_CONN_ID,
            # Each worker's own directory: nothing here is seen by the other worker.
            "staging_dir": str(root / f"staging-{worker}"),
            "storage": {"url": f"file://{storage}", "aws_conn_id": "pgb_test_aws"},
            "encryption": {"recipients": [age.public]},
            "retries": 2,
            "retry_delay": "1s",
            "max_retry_delay": "2s",
            "alerts": {"emails": []},
            "pools": {"source_server": "e2e-source:5432", "source_slots": 1},
        },
        "targets": {
            **{
                name: {
                    "source_conn_id": f"pgb_e2e_src_{name}",
                    "staging_url": f"s3://{bucket}/staging",
                }
                for name in OBJECT_STAGED
            },
            NOT_SHARED: {"source_conn_id": f"pgb_e2e_src_{NOT_SHARED}"},
        },
    }


def _wait_ready(stack: Stack, targets: list[str]) -> None:
    """API answers, every DAG parsed without errors, both workers ready; else fail with logs."""
    expected = {f"pg_backup_{kind}{name}" for name in targets for kind in ("", "emergency_")}
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        stack.assert_alive()
        try:
            if stack.client.get("/api/v2/monitor/health", timeout=5).status_code == 200:
                body = stack.api(
                    "GET", "/dags", params={"dag_id_pattern": "pg_backup", "limit": 100}
                )
                found = {d["dag_id"] for d in body["dags"]}
                errors = stack.api("GET", "/importErrors")
                if errors["total_entries"]:
                    pytest.fail(f"DAG import errors: {json.dumps(errors['import_errors'])}")
                ready = [
                    w
                    for w in ("a", "b")
                    if " ready."
                    in (stack.home / "logs" / f"worker-{w}.log").read_text(errors="replace")
                ]
                if expected <= found and len(ready) == 2:
                    return
                last = f"parsed {len(found & expected)}/{len(expected)}, workers ready {ready}"
        except (httpx.HTTPError, OSError, AssertionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    pytest.fail(f"Celery stack not ready after {START_TIMEOUT:.0f}s ({last})\n{stack.log_tails()}")


@pytest.fixture(scope="module")
def celery_stack(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_sink: MailSink,
    age_keys: AgeKeys,
    pg_server: None,
    s3_server: Any,
) -> Iterator[tuple[Stack, str]]:
    """The stack, and the staging bucket."""
    root = tmp_path_factory.mktemp("celery")
    home = root / "airflow"
    (home / "logs").mkdir(parents=True)
    storage = root / "storage"
    bucket = s3_server.new_bucket()
    for worker in ("a", "b"):
        (root / f"pg_backup-{worker}.yaml").write_text(
            yaml.safe_dump(_config(root, worker, age_keys, bucket, storage), sort_keys=False)
        )
    port = free_port()
    suffix = uuid.uuid4().hex[:8]
    meta = f"pgb_e2e_meta_{suffix}"
    targets = [*OBJECT_STAGED, NOT_SHARED]
    sources = {name: f"pgb_e2e_celery_{name}_{suffix}" for name in targets}
    psql(f'CREATE DATABASE "{meta}"')
    for db in sources.values():
        psql(f'CREATE DATABASE "{db}"')
        psql(RICH_SCHEMA, db)
    # Its own Redis database and queue: parallel sessions never take each other's tasks.
    redis_db = random.randint(1, 15)
    queue = f"pgb_e2e_{suffix}"
    meta_url = f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{meta}"
    launcher = root / "launch.sh"
    launcher.write_text(LAUNCHER.format(deploy=REPO / "deploy" / "airflow.sh", root=root))
    launcher.chmod(0o755)

    env = airflow_env(home)
    env.update(
        {
            "PYTHONPATH": str(REPO),  # tests.e2e.worker_host, the hostname callable
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{meta}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.worker_host.hostname",
            "PGB_E2E_HOSTNAME": "control",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "ui-login.json"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "PG_BACKUP_CONFIG": str(root / "pg_backup-a.yaml"),
            "PG_BACKUP_API_PORT": str(port),
            "PG_BACKUP_API_HOST": "127.0.0.1",
            "AIRFLOW_CONN_PGB_TEST_AWS": s3_server.conn_json(),
            f"AIRFLOW_CONN_{SCRATCH_CONN_ID.upper()}": pg_conn_json("postgres"),
            **{
                f"AIRFLOW_CONN_PGB_E2E_SRC_{name.upper()}": pg_conn_json(db)
                for name, db in sources.items()
            },
        }
    )
    launcher_log = (home / "launcher.log").open("wb")
    _set_child_subreaper(True)
    proc = subprocess.Popen(
        [str(launcher)],
        env=env,
        cwd=str(root),
        stdout=launcher_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    stack = Stack(
        home=home,
        port=port,
        env=env,
        proc=proc,
        sink=smtp_sink,
        sources=sources,
        storage_root=storage,
        staging_root=root,
        config_path=root / "pg_backup-a.yaml",
    )
    try:
        _wait_ready(stack, targets)
        for name in targets:
            stack.api(
                "PATCH",
                f"/dags/pg_backup_emergency_{name}",
                json={"is_paused": False},
                params={"update_mask": "is_paused"},
            )
        yield stack, bucket
    finally:
        leftovers = stack.stop()
        _set_child_subreaper(False)
        launcher_log.close()
        for db in [*sources.values(), meta]:
            psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        for row in psql(
            "SELECT datname FROM pg_database WHERE "
            + " OR ".join(f"datname LIKE 'pgb\\_verify\\_{n}\\_%'" for n in targets)
        ).splitlines():
            psql(f'DROP DATABASE IF EXISTS "{row}" WITH (FORCE)')
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=redis_db).delete(queue)
        assert not leftovers, f"processes survived TERM: {leftovers}"
        assert not _session_pids(proc.pid, zombies=True)


def _times(ti: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])


def _verification(storage: Path, target: str) -> dict[str, Any] | None:
    """The target's verification.json (each target here makes one set), if any."""
    found = list((storage / target).rglob("verification.json"))
    return json.loads(found[0].read_text()) if found else None


def test_three_targets_verify_across_two_workers_with_object_staging(celery_stack):
    """c1..c3 triggered together all verify; a run's stages ran on both workers; dumps never overlap."""
    stack, bucket = celery_stack
    runs = {
        name: stack.trigger(f"pg_backup_emergency_{name}", "celery e2e")["dag_run_id"]
        for name in OBJECT_STAGED
    }
    hosts: dict[str, set[str]] = {}
    dumps = []
    for name, run_id in runs.items():
        dag_id = f"pg_backup_emergency_{name}"
        run = stack.wait_run(dag_id, run_id, RUN_TIMEOUT)
        tis = stack.task_instances(dag_id, run_id)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert run["state"] == "success", f"{name}: {states}\n{stack.log_tails(40)}"
        assert tis["verify"]["state"] == "success"
        hosts[name] = {ti["hostname"] for ti in tis.values() if ti["state"] == "success"}
        assert hosts[name] <= set(WORKERS), hosts
        assert tis["dump"]["pool"] == SOURCE_POOL
        dumps.append(_times(tis["dump"]))
        record = _verification(stack.storage_root, name)
        assert record is not None and record["status"] == "verified", record
    assert any(h == set(WORKERS) for h in hosts.values()), (
        f"no run had stages on both workers: {hosts}"
    )
    dumps.sort()
    for (_, end), (start, _) in zip(dumps, dumps[1:], strict=False):
        assert start >= end, f"dumps overlapped in a pool of one slot: {dumps}"
    # Every teardown removed its run's staged objects.
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=json.loads(stack.env["AIRFLOW_CONN_PGB_TEST_AWS"])["extra"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    left = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    left = [o["Key"] for o in left if not o["Key"].endswith("/.preflight")]
    assert left == [], left


def test_local_staging_not_shared_fails_naming_both_hosts(celery_stack):
    """n1 stages in each worker's own directory: a stage on the other worker fails at once, naming both hosts and staging_url; nothing verified."""
    stack, _ = celery_stack
    dag_id = f"pg_backup_emergency_{NOT_SHARED}"
    split = None
    for _ in range(4):
        run_id = stack.trigger(dag_id, "not shared")["dag_run_id"]
        run = stack.wait_run(dag_id, run_id, RUN_TIMEOUT)
        tis = stack.task_instances(dag_id, run_id)
        ran_on = {ti["hostname"] for ti in tis.values() if ti["hostname"] in WORKERS}
        if run["state"] == "success":
            # Every stage happened to land on one worker: it did see its files, rightly green.
            handed = ("dump", "compress", "encrypt", "restore")  # each reads the one before
            assert len({tis[t]["hostname"] for t in handed}) == 1
            continue
        split = (run_id, tis, ran_on)
        break
    assert split is not None, "four runs in a row ran every handover on one worker"
    run_id, tis, ran_on = split
    failed = [t for t, ti in tis.items() if ti["state"] == "failed"]
    assert failed, {t: ti["state"] for t, ti in tis.items()}
    # The restore branch may have proven the dump on the dump's own worker; what counts is that
    # no verification record was stored.
    assert tis["mark_verified"]["state"] != "success"
    assert _verification(stack.storage_root, NOT_SHARED) is None
    task = failed[0]
    ti = tis[task]
    assert ti["try_number"] == 1, "a staging that is not shared must not be retried"
    log = json.dumps(
        stack.api(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task}/logs/1",
            params={"full_content": "true"},
        )
    )
    assert "is not visible on host" in log, log[-3000:]
    reader = ti["hostname"]
    writer = ({"worker-a", "worker-b"} - {reader}).pop()
    assert f"written by host '{writer}'" in log and f"on host '{reader}'" in log
    assert "staging_url: s3://" in log
    assert ran_on == set(WORKERS)
