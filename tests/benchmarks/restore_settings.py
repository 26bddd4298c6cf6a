"""Session settings for the verification restore, side by side: do they make it faster?

    python -m tests.benchmarks.restore_settings --db pgb_bench_1g --repeat 3 \\
        --setting "" --setting "maintenance_work_mem=256MB" --setting "maintenance_work_mem=1GB"

PostgreSQL's "Populating a Database" advice for restores includes a larger
``maintenance_work_mem``. Here each repetition restores one ``pg_dump -Fc -Z0`` of ``--db``
(made once) with ``pg_restore -j2 --no-owner`` into a fresh database once per ``--setting``
(given to every pg_restore session through ``PGOPTIONS``; "" is the server's defaults),
interleaved so that a noisy neighbour hits all alike, and prints the medians and their ratio
to the first setting. Raw numbers: ``bench-results/restore-settings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.benchmarks.bench import add_pg_arguments


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pg_arguments(parser)
    parser.add_argument("--db", required=True, help="the database to dump (left unchanged)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--setting", action="append", required=True, help='name=value, or "" for defaults'
    )
    parser.add_argument("--out", default="bench-results/restore-settings.json")
    args = parser.parse_args(argv)
    server = ["-h", args.host, "-p", str(args.port), "-U", args.user]
    runs: dict[str, list[float]] = {s: [] for s in args.setting}
    with tempfile.TemporaryDirectory(prefix="pgb-restore-settings-") as tmp:
        dump = Path(tmp) / "db.dump"
        subprocess.run(["pg_dump", *server, "-Fc", "-Z0", "-f", str(dump), args.db], check=True)
        for rep in range(args.repeat):
            order = args.setting if rep % 2 == 0 else list(reversed(args.setting))
            for setting in order:
                name = f"pgb_bench_settings_{uuid.uuid4().hex[:8]}"
                subprocess.run(["createdb", *server, "-T", "template0", name], check=True)
                env = {**os.environ, "PGOPTIONS": f"-c {setting}" if setting else ""}
                try:
                    started = time.monotonic()
                    subprocess.run(
                        ["pg_restore", *server, "-j2", "--no-owner", "-d", name, str(dump)],
                        check=True,
                        env=env,
                    )
                    seconds = time.monotonic() - started
                finally:
                    subprocess.run(["dropdb", *server, "--force", name], check=True)
                runs[setting].append(seconds)
                print(f"rep {rep + 1} {setting or 'defaults'}: {seconds:.1f} s", flush=True)
    base = statistics.median(runs[args.setting[0]])
    for setting, times in runs.items():
        median = statistics.median(times)
        print(f"{setting or 'defaults':35} {median:7.1f} s  {median / base:5.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"db": args.db, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
