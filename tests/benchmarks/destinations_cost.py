"""What a second and third destination cost: the upload stage to 1 against 3 destinations.

    python -m tests.benchmarks.destinations_cost --mb 200 --repeat 5

Builds a source database of about ``--mb`` MB of table data, dumps, compresses and encrypts it
once with the real stages, then, interleaved ``--repeat`` times so that a noisy neighbour hits
both alike, uploads the staged set (each time as a new backup id) to:

  one     a single ``storage:`` destination (a directory), as before destinations existed
  three   three destinations, each its own upload (a directory and two S3 servers on two ports,
          moto over HTTP), one after the other as upload_<name> tasks run with one worker slot

and prints the medians and the ratio three/one. The verification restore is not in either:
the set is verified once whatever the number of destinations. Raw numbers go to
``bench-results/destinations-cost.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.benchmarks.moto_client import bench_s3_client
from tests.conftest import PG_HOST, PG_PORT, PG_USER, free_port, psql, wait_port
from tests.integration.test_failures import stage_until_encrypted


def _moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_port(port)
    return server, f"http://127.0.0.1:{port}"


def _bucket(endpoint: str) -> str:

    name = f"pgbb-{uuid.uuid4().hex[:10]}"
    bench_s3_client(endpoint).create_bucket(Bucket=name)
    return name


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    from pyrage import x25519

    from pg_backup.adapters.pgconn import PgEndpoint
    from pg_backup.core import layout
    from pg_backup.core.config import parse_config
    from pg_backup.core.records import EncryptResult
    from pg_backup.stages.destinations import upload_to
    from pg_backup.stages.runtime import Runtime

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="table data of the source, MB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="bench-results/destinations-cost.json")
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log, per request

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    db = f"pgbb_dest_{uuid.uuid4().hex[:8]}"
    psql(f'CREATE DATABASE "{db}"')
    servers = []
    try:
        # Random text compresses little, so the uploaded object is about the table data.
        psql(
            "CREATE TABLE votes AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) AS v "
            f"FROM generate_series(1, {args.mb * 1024 * 1024 // 100}) i",
            db,
        )
        work = Path(tempfile.mkdtemp(prefix="pgbb-dest-"))
        recipient = str(x25519.Identity.generate().to_public())
        endpoints = []
        for index in (1, 2):
            server, endpoint = _moto()
            servers.append(server)
            endpoints.append(endpoint)
            os.environ[f"AIRFLOW_CONN_PGBB_S3_{index}"] = json.dumps(
                {
                    "conn_type": "aws",
                    "login": "bench",
                    "password": "bench",
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            )
        base = {
            "source_conn_id": "src",
            "scratch_conn_id": "scratch",
            "staging_dir": str(work / "staging"),
            "encryption": {"recipients": [recipient]},
        }
        s3 = [
            {"name": f"s3_{i}", "url": f"s3://{_bucket(ep)}/b", "aws_conn_id": f"pgbb_s3_{i}"}
            for i, ep in enumerate(endpoints, start=1)
        ]
        one = parse_config(
            {"targets": {"bench": {**base, "storage": {"url": f"file://{work / 'one'}"}}}}
        ).target("bench")
        three = parse_config(
            {
                "targets": {
                    "bench": {
                        **base,
                        "destinations": [{"name": "nas", "url": f"file://{work / 'nas'}"}, *s3],
                    }
                }
            }
        ).target("bench")
        source = PgEndpoint("src", PG_HOST, PG_PORT, PG_USER, db)
        clock = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
        staging = work / "staging" / "bench" / "staged"

        def run_info() -> layout.RunInfo:
            nonlocal clock
            clock += timedelta(hours=1)
            backup = layout.backup_id("bench", clock, "scheduled")
            return layout.RunInfo(
                target="bench",
                kind="scheduled",
                backup_id=backup,
                taken_at=clock.isoformat(),
                dag_id="pg_backup_bench",
                run_id=f"manual__{clock.isoformat()}",
                staging=str(staging),
            )

        dumped, data, tables = stage_until_encrypted(one, run_info(), source)
        encrypted = EncryptResult(data=data, tables=tables)
        results: dict[str, list[float]] = {"one": [], "three": []}
        per_destination: dict[str, list[float]] = {d.name: [] for d in three.destinations}
        for _ in range(args.repeat):
            rt = Runtime(one, run_info(), source=source)
            started = time.monotonic()
            upload_to(rt, "default", dumped, encrypted)
            results["one"].append(time.monotonic() - started)
            rt = Runtime(three, run_info(), source=source)
            started = time.monotonic()
            for dest in three.destinations:
                began = time.monotonic()
                upload_to(rt, dest.name, dumped, encrypted)
                per_destination[dest.name].append(time.monotonic() - began)
            results["three"].append(time.monotonic() - started)
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"uploaded object: {data.bytes / 1e6:,.1f} MB ({args.repeat} repetitions, interleaved)"
        )
        print(f"upload to 1 destination (file://):        median {med['one']:.2f} s")
        print(f"upload to 3 destinations (file, S3, S3):  median {med['three']:.2f} s")
        for name, values in per_destination.items():
            print(f"  upload_{name:<8} median {statistics.median(values):.2f} s")
        print(f"ratio three/one: {med['three'] / med['one']:.2f}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "object_bytes": data.bytes,
                    "seconds": results,
                    "per_destination": per_destination,
                },
                indent=2,
            )
        )
    finally:
        for server in servers:
            server.stop()
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
