"""What byte-compiled modules save a task process: the same processes with and without .pyc files.

    python -m tests.benchmarks.startup --repeat 5

Each repetition runs, interleaved, ``import airflow.sdk`` in a fresh interpreter and the four
stages of the daily path (dump, compress, encrypt, upload: ``tests.benchmarks.stages``, one
process each) on a tiny voting database, once reading the installed ``.pyc`` files and once with
``PYTHONPYCACHEPREFIX`` pointing at an empty directory and ``PYTHONDONTWRITEBYTECODE`` set, so
that every module is compiled from source again, as it was in every process before
``make install`` byte-compiled them. Prints the medians (seconds, wall) and their ratio. The
database ``pgb_startup_tiny`` is built once (2,000 votes) and dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks.bench import COMPILED, REPO, Pg

DB = "pgb_startup_tiny"
TAKEN_AT = datetime(2026, 1, 1, tzinfo=UTC)
STAGES = ("dump", "compress", "encrypt", "upload")


def _specs(work: Path, pg: Pg) -> list[Path]:
    """A config and one stage spec per stage, as the benchmark writes them."""
    import yaml
    from pyrage import x25519

    from pg_backup.core import layout

    recipient = str(x25519.Identity.generate().to_public())
    config = work / "pg_backup.yaml"
    target = {
        "source_conn_id": "bench_src",
        "scratch_conn_id": "bench_scratch",
        "staging_dir": str(work / "staging"),
        "storage": {"url": f"file://{work / 'storage'}"},
        "encryption": {"recipients": [recipient]},
        "alerts": {"emails": []},
    }
    config.write_text(yaml.safe_dump({"targets": {"startup": target}}))
    records = work / "records"
    records.mkdir()
    specs = []
    for stage in STAGES:
        spec = {
            "config": str(config),
            "target": "startup",
            "run": {
                "target": "startup",
                "kind": "scheduled",
                "backup_id": layout.backup_id("startup", TAKEN_AT, "scheduled"),
                "taken_at": TAKEN_AT.isoformat(),
                "dag_id": "pg_backup_startup",
                "run_id": "startup",
                "staging": str(work / "staging" / "startup" / "run"),
            },
            "records": str(records),
            "pg": {"bench_src": pg.fields(DB), "bench_scratch": pg.fields("postgres")},
            "s3_endpoint": None,
            "database": None,
        }
        path = work / f"{stage}.spec.json"
        path.write_text(json.dumps(spec))
        specs.append(path)
    return specs


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    from tests.benchmarks.bench import build_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--user", default=os.environ.get("PGUSER") or "postgres")
    args = parser.parse_args(argv)
    pg = Pg(args.host, args.port, args.user)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", *COMPILED],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    build_data(pg, "tiny", votes=2000, dbname=DB)
    work = Path(tempfile.mkdtemp(prefix="pgb-startup-"))
    empty = work / "no-pyc"
    empty.mkdir()
    try:
        specs = _specs(work, pg)
        with_pyc = dict(os.environ)
        with_pyc.pop("PYTHONPYCACHEPREFIX", None)
        without = dict(with_pyc, PYTHONPYCACHEPREFIX=str(empty), PYTHONDONTWRITEBYTECODE="1")
        seconds: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label, env in (("pyc", with_pyc), ("no pyc", without)):
                af = _timed([sys.executable, "-c", "import airflow.sdk"], env)
                seconds.setdefault(f"import airflow.sdk, {label}", []).append(af)
                shutil.rmtree(work / "staging", ignore_errors=True)
                shutil.rmtree(work / "storage", ignore_errors=True)
                total = sum(
                    _timed([sys.executable, "-m", "tests.benchmarks.stages", stage, str(spec)], env)
                    for stage, spec in zip(STAGES, specs, strict=True)
                )
                seconds.setdefault(f"four stage processes, {label}", []).append(total)
        assert not any(empty.rglob("*.pyc")), "a process wrote .pyc files into the empty prefix"
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        for key, value in medians.items():
            print(
                f"{key:40} {value:6.2f} s  (min {min(seconds[key]):.2f}, max {max(seconds[key]):.2f})"
            )
        for what in ("import airflow.sdk", "four stage processes"):
            ratio = medians[f"{what}, pyc"] / medians[f"{what}, no pyc"]
            print(f"{what}: with .pyc / without = {ratio:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        pg.drop(DB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
