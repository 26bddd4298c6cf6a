"""Directory staging against object-store staging: seconds and peak memory of compress + encrypt.

Run: ``.venv/bin/python -m tests.benchmarks.staging_bench --mb 128 --repeat 3``. A synthetic dump
of ``--mb`` MB (half random, half repetitive: zstd gets about 2x) is staged once per mode; then
compress and encrypt run in a fresh child process per repeat, so the child's peak RSS
(``VmHWM``: not ``ru_maxrss``, which on Linux keeps the parent's resident size at the fork, and
the parent here holds moto's objects) is that of the stage alone. Object-store staging goes to moto's S3 server over
HTTP on a loopback port, started by this script (its memory is not the child's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

_HWM = """
def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_CHILD = (
    _HWM
    + """
import json, sys, time
from pathlib import Path
from pg_backup.adapters.run_staging import LocalStaging, ObjectStaging
from pg_backup.adapters.storage import S3Storage
from pg_backup.adapters.streams import compress_staged, encrypt_staged
from pg_backup.core.config import StorageConfig
from pg_backup.core.records import StagedFile
from pyrage import x25519

mode, where, record, part = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
dump = StagedFile.model_validate(record)
if mode == "local":
    staged = LocalStaging(Path(where))
else:
    store = S3Storage(where, StorageConfig(url=where, aws_conn_id="pgb_bench_aws"), "pgb_bench_aws")
    staged = ObjectStaging(store, "bench/run/", Path(sys.argv[5]), part)
started = time.perf_counter()
compressed = compress_staged(staged, dump, "db.dump.zst")
encrypt_staged(staged, compressed, "db.dump.zst.age", [x25519.Identity.generate().to_public()], part)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "max_rss_mb": hwm_mb()}))
"""
)

_BASELINE = (
    _HWM
    + """
import json
from pg_backup.adapters import run_staging, storage, streams  # noqa: F401
import boto3, pyrage, zstandard  # noqa: F401
from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # noqa: F401
print(json.dumps({"max_rss_mb": hwm_mb()}))
"""
)


def synthetic_dump(path: Path, megabytes: int) -> dict[str, Any]:
    """Write the input and return its StagedFile record."""
    import hashlib

    sha = hashlib.sha256()
    block = 1024 * 1024
    with path.open("wb") as out:
        for i in range(megabytes):
            chunk = os.urandom(block // 2) + bytes([i % 251]) * (block // 2)
            out.write(chunk)
            sha.update(chunk)
    return {"name": path.name, "bytes": megabytes * block, "sha256": sha.hexdigest()}


def child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one measured child and return its JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Print one JSON line per mode: median seconds, MB/s, peak RSS over the import baseline."""
    from moto.server import ThreadedMotoServer

    from tests.benchmarks.moto_client import bench_s3_client

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part-mb", type=int, default=8)
    args = parser.parse_args()
    part = args.part_mb * 1024 * 1024

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    home = tempfile.mkdtemp(prefix="pgb-bench-airflow-")
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": home,
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AIRFLOW_CONN_PGB_BENCH_AWS": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "bench",
                    "password": "bench",
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        }
    )
    client = bench_s3_client(endpoint)
    client.create_bucket(Bucket="pgb-bench")
    baseline = child([_BASELINE], env)["max_rss_mb"]
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "run"
            local.mkdir()
            record = synthetic_dump(local / "db.dump", args.mb)
            with (local / "db.dump").open("rb") as raw:
                client.upload_fileobj(raw, "pgb-bench", "staging/bench/run/db.dump")
            modes = {
                "directory": ["local", str(local), json.dumps(record), str(part)],
                "object store": [
                    "object",
                    "s3://pgb-bench/staging",
                    json.dumps(record),
                    str(part),
                    str(Path(tmp) / "work"),
                ],
            }
            for name, argv in modes.items():
                runs = [child([_CHILD, *argv], env) for _ in range(args.repeat)]
                seconds = statistics.median(r["seconds"] for r in runs)
                rss = statistics.median(r["max_rss_mb"] for r in runs)
                results.append(
                    {
                        "staging": name,
                        "mb": args.mb,
                        "median_s": round(seconds, 2),
                        "mb_per_s": round(args.mb / seconds, 1),
                        "peak_rss_mb": round(rss, 1),
                        "over_baseline_mb": round(rss - baseline, 1),
                    }
                )
    finally:
        server.stop()
    for line in results:
        print(json.dumps(line))
    print(json.dumps({"import_baseline_rss_mb": round(baseline, 1), "part_mb": args.part_mb}))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(json.dumps({"wall_s": round(time.monotonic() - started, 1)}), file=sys.stderr)
