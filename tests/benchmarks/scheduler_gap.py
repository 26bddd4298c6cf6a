"""What the scheduler's idle sleep costs the whole daily run: the same DAG under two schedulers.

    python -m tests.benchmarks.scheduler_gap --size 1G --repeat 3 --sleep 1 --sleep 0.25

Starts one scheduler stack (``deploy/airflow.sh all``, as scenario G of the benchmark) per value
of ``[scheduler] scheduler_idle_sleep_time`` (Airflow's default is 1 s: how long the scheduler
sleeps after a loop that found nothing to do, so how long a finished task may wait before its
downstream task is queued), then runs the emergency backup DAG of the bench database on each in
turn, interleaved, ``--repeat`` times. Prints, per value, the median wall of the run and the
median of the gaps between consecutive tasks on its longest path (seconds), and then what each
scheduler costs when there is nothing to do (its processes' CPU over ``--idle-seconds``). The
database must exist (``make bench-data SIZE=1G``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.bench import Pg, SchedulerStack, SizeBench, add_pg_arguments, db_name

DAG = "pg_backup_emergency_benchsched"
# The restore branch: the longest path of the daily run on the voting data (create_scratch_db
# runs beside the dump).
PATH = [
    "preflight",
    "dump",
    "restore",
    "verify",
    "mark_verified",
    "cleanup_staging",
]


def gaps(tasks: dict[str, Any]) -> float:
    """Seconds between each task's end and the next one's start on ``PATH``, summed."""

    def ts(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    return sum(
        max(0.0, ts(tasks[b]["start"]) - ts(tasks[a]["end"])) for a, b in itertools.pairwise(PATH)
    )


def idle_cpu(stack: SchedulerStack, seconds: float) -> float:
    """Share of one core the stack's scheduler processes use over ``seconds`` with no run."""

    def ticks() -> int:
        total = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[2] is the process group (stat's 5th field), [11]/[12] utime/stime
            if int(fields[2]) == stack.proc.pid and b"scheduler" in cmdline:
                total += int(fields[11]) + int(fields[12])
        return total

    before = ticks()
    time.sleep(seconds)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sleep", type=float, action="append", required=True)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    add_pg_arguments(parser)
    args = parser.parse_args(argv)
    from pyrage import x25519

    pg = Pg(args.host, args.port, args.user)
    work = Path(tempfile.mkdtemp(prefix="pgb-gap-"))
    log = work / "stacks.log"
    recipient = str(x25519.Identity.generate().to_public())
    bench = SizeBench(pg, args.size, work, None, {}, recipient, log, db_name(args.size))
    stacks: dict[float, SchedulerStack] = {}
    runs: dict[float, list[dict[str, Any]]] = {s: [] for s in args.sleep}
    try:
        env = bench._scheduler_env()
        for sleep in args.sleep:
            stacks[sleep] = SchedulerStack(
                work / f"airflow-{sleep:g}",
                dict(env, AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=str(sleep)),
                log,
            )
        for rep in range(args.repeat):
            order = args.sleep if rep % 2 == 0 else list(reversed(args.sleep))
            for sleep in order:
                stats = stacks[sleep].run_once(DAG, f"idle sleep {sleep:g}, rep {rep}")
                shutil.rmtree(work / "storage", ignore_errors=True)
                shutil.rmtree(work / "staging-sched", ignore_errors=True)
                if stats["state"] != "success":
                    raise RuntimeError(f"the run ended {stats['state']}: {stats['tasks']}")
                runs[sleep].append(stats)
                print(f"idle sleep {sleep:g} s: run {stats['wall']:.1f} s", flush=True)
        idle = {sleep: idle_cpu(stack, args.idle_seconds) for sleep, stack in stacks.items()}
        for sleep, done in runs.items():
            wall = statistics.median(r["wall"] for r in done)
            gap = statistics.median(gaps(r["tasks"]) for r in done)
            print(
                f"scheduler_idle_sleep_time {sleep:g} s: run {wall:.1f} s, gaps on the longest "
                f"path {gap:.1f} s (medians of {len(done)}); idle, the scheduler used "
                f"{idle[sleep]:.1%} of a core over {args.idle_seconds:g} s"
            )
    finally:
        for stack in stacks.values():
            stack.stop()
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
