"""What byte-compiled modules save a task process: the same processes with and without .pyc files.

    python -m tests.benchmarks.startup --repeat 5

Each repetition runs, interleaved, ``import airflow.sdk`` in a fresh interpreter and the four
stages of the daily path (dump, compress, encrypt, upload: the benchmark's one-stage processes,
``SizeBench._stage``) on a tiny voting database, once reading the installed ``.pyc`` files and
once with ``PYTHONPYCACHEPREFIX`` pointing at an empty directory and ``PYTHONDONTWRITEBYTECODE``
set, so that every module is compiled from source again, as it was in every process before
``make install`` byte-compiled them. Prints the medians (seconds, wall) and their ratio. The
database ``pgb_startup_tiny`` is built once (2,000 votes) and dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from tests.benchmarks.bench import (
    COMPILED,
    PY,
    REPO,
    STAGES,
    Pg,
    SizeBench,
    add_pg_arguments,
    build_data,
)

DB = "pgb_startup_tiny"


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    from pyrage import x25519

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    add_pg_arguments(parser)
    args = parser.parse_args(argv)
    pg = Pg(args.host, args.port, args.user)
    subprocess.run(
        [PY, "-m", "compileall", "-q", "-j", "0", *COMPILED], check=True, stdout=subprocess.DEVNULL
    )
    build_data(pg, "tiny", votes=2000, dbname=DB)
    work = Path(tempfile.mkdtemp(prefix="pgb-startup-"))
    empty = work / "no-pyc"
    empty.mkdir()
    recipient = str(x25519.Identity.generate().to_public())
    bench = SizeBench(pg, "tiny", work / "bench", None, {}, recipient, work / "bench.log", DB)
    modes = {
        "pyc": {},
        "no pyc": {"PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"},
    }
    seconds: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeat):
            for label, extra in modes.items():
                with mock.patch.dict(os.environ, extra):
                    started = time.monotonic()
                    subprocess.run([PY, "-c", "import airflow.sdk"], check=True, cwd=REPO)
                    seconds.setdefault(f"import airflow.sdk, {label}", []).append(
                        time.monotonic() - started
                    )
                    records = work / "records" / f"{label}-{rep}"
                    total = sum(bench._stage(s, "bench", rep, records, [DB]).wall for s in STAGES)
                seconds.setdefault(f"four stage processes, {label}", []).append(total)
                shutil.rmtree(bench.work / "staging", ignore_errors=True)
                shutil.rmtree(bench.work / "storage", ignore_errors=True)
        assert not any(empty.rglob("*.pyc")), "a process wrote .pyc files into the empty prefix"
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        for key, value in medians.items():
            low, high = min(seconds[key]), max(seconds[key])
            print(f"{key:40} {value:6.2f} s  (min {low:.2f}, max {high:.2f})")
        for what in ("import airflow.sdk", "four stage processes"):
            ratio = medians[f"{what}, pyc"] / medians[f"{what}, no pyc"]
            print(f"{what}: with .pyc / without = {ratio:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        pg.drop(DB)
    return 0


if __name__ == "__main__":
    sys.exit(main())
