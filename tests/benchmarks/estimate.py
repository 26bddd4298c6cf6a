"""Preflight's size estimate against what pg_dump really writes, and what the estimate costs.

    python -m tests.benchmarks.estimate --db pgb_bench_1g            # an existing database
    python -m tests.benchmarks.estimate --compressible 1G            # a TOAST-heavy one, made
                                                                     # and dropped by the run

For each database: the on-disk estimate preflight used before (``pg_table_size``), the
estimate it uses now (``stages.preflight.estimate_dump_bytes``) with its wall time (median of
``--repeat``), and the bytes of ``pg_dump -Fc -Z0`` (the dump stage's own format); the ratios
estimate / dump are printed last. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid

from pg_backup.adapters.pgconn import PgEndpoint
from pg_backup.stages.preflight import _SIZE_SQL, estimate_dump_bytes


def dump_bytes(ep: PgEndpoint) -> int:
    """Bytes pg_dump -Fc -Z0 writes for the database (streamed, counted, not kept)."""
    env = dict(os.environ, **ep.libpq_env())
    proc = subprocess.Popen(["pg_dump", "-Fc", "-Z0"], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait() != 0:
        raise SystemExit(f"pg_dump failed on {ep.describe()}")
    return total


def measure(ep: PgEndpoint, repeat: int) -> dict[str, float]:
    """On-disk estimate, the uncompressed estimate and its median time, the real dump size."""
    times, estimate = [], 0
    with ep.connect(autocommit=True) as conn:
        on_disk = int(conn.execute(_SIZE_SQL).fetchone()[0])
        for _ in range(repeat):
            started = time.monotonic()
            estimate = estimate_dump_bytes(conn)
            times.append(time.monotonic() - started)
    return {
        "on_disk": on_disk,
        "estimate": max(on_disk, estimate),
        "seconds": statistics.median(times),
        "dump": dump_bytes(ep),
    }


def compressible(admin: PgEndpoint, size: str) -> str:
    """A database of highly compressible text (about ``size`` uncompressed)."""
    total = int(float(size.rstrip("GgMm")) * (1024**3 if size[-1] in "Gg" else 1024**2))
    rows = max(1, total // 200_000)
    name = f"pgb_bench_toast_{uuid.uuid4().hex[:6]}"
    with admin.connect(autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin.with_db(name).connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO notes SELECT i, repeat('vote counted; ', 14286) "
            "FROM generate_series(1, %s) i",
            (rows,),
        )
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.estimate")
    parser.add_argument("--host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--user", default=os.environ.get("PGUSER") or os.environ.get("USER", ""))
    parser.add_argument("--db", action="append", default=[], help="an existing database")
    parser.add_argument("--compressible", action="append", default=[], help="e.g. 1G")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    admin = PgEndpoint("bench", args.host, args.port, args.user, "postgres")
    made = [compressible(admin, size) for size in args.compressible]
    try:
        print(
            f"{'database':<28} {'on disk MB':>11} {'estimate MB':>12} {'dump MB':>9} "
            f"{'est/dump':>9} {'disk/dump':>10} {'est s':>7}"
        )
        for db in [*args.db, *made]:
            m = measure(admin.with_db(db), args.repeat)
            print(
                f"{db:<28} {m['on_disk'] / 1e6:>11,.1f} {m['estimate'] / 1e6:>12,.1f} "
                f"{m['dump'] / 1e6:>9,.1f} {m['estimate'] / m['dump']:>9.2f} "
                f"{m['on_disk'] / m['dump']:>10.3f} {m['seconds']:>7.2f}"
            )
    finally:
        with admin.connect(autocommit=True) as conn:
            for db in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
