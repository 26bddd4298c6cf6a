"""The benchmark: pg_backup's stages side by side with the old cron script and plain pg_dump.

    python -m tests.benchmarks.bench data --size 1G          # build the voting database
    python -m tests.benchmarks.bench run --size 1G --repeat 3  # measure, write bench-results/

Scenarios, each run REPEAT times, interleaved (the order of independent groups rotates from one
repetition to the next, so a noisy neighbour does not always hit the same scenario):

  A   the old cron script: pg_dump plain SQL to a file, then gzip it
  B   pg_dump -Fc (default compression) to a file
  C   the floor: pg_dump -Fc -Z0 > /dev/null          (C-j2: pg_dump -Fd -j2 -Z0 to a directory)
  S   a bound, not ours: pg_dump -Fc -Z0 | zstd | age to a file in one streaming pass, at the
      zstd level our compress stage defaults to
  D   our stages dump -> compress -> encrypt -> upload (file://), one fresh process each;
      D-s3 is the same set uploaded to a local S3 server instead; D-j2 uses dump.jobs=2
  E   pg_restore -j2 of B into a fresh database; E-ours: our restore + verify of D's
      staged dump (E-ours-j2: of D-j2's)
  F   the whole backup DAG under dag.test() (preflight .. verify, teardowns): what Airflow adds
  R   bare pg_restore -j2 --no-owner of C's dump (-Fc -Z0, from a file) into a fresh database
  G   the whole daily DAG under a real scheduler (LocalExecutor, parallelism 4, api-server,
      dag-processor): the restore branch runs beside compress -> encrypt -> upload, as in
      production; wall = the run's start to end in the metadata database

For each: wall and CPU seconds, peak RSS of every process (ours, and the PostgreSQL backends
serving it), output bytes. Writes report.md, results.json and bench.png to the output
directory and prints the target ratios last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.benchmarks.measure import Measurement, run_measured
from tests.benchmarks.moto_client import bench_s3_client

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

LABELS = {
    "A": "cron script: pg_dump (plain SQL) to a file, then gzip",
    "B": "pg_dump -Fc (default compression) to a file",
    "C": "floor: pg_dump -Fc -Z0 > /dev/null",
    "C-j2": "floor, 2 jobs: pg_dump -Fd -j2 -Z0 to a directory",
    "S": "one streaming pass: pg_dump -Fc -Z0 | zstd -T0 | age > file, our default level (a bound, not ours)",
    "D": "ours: dump -> compress -> encrypt -> upload file://",
    "D-s3": "ours: the same, upload to the local S3 server",
    "D-j2": "ours with dump.jobs=2 (directory format, packed)",
    "E": "pg_restore -j2 of B into a fresh database",
    "E-ours": "ours: restore (pg_restore -j2) + verify",
    "E-ours-j2": "ours: restore + verify of the jobs=2 set",
    "F": "the whole DAG under dag.test()",
    "R": "bare pg_restore -j2 --no-owner of C's dump into a fresh database",
    "G": "the whole DAG under a real scheduler (LocalExecutor), content proof included",
}
STAGES = ("dump", "compress", "encrypt", "upload")
ORDER = list(LABELS)


def db_name(size: str) -> str:
    """The bench database of a size label: ``0.25G`` -> ``pgb_bench_0_25g``."""
    return "pgb_bench_" + size.lower().replace(".", "_").rstrip("b")


@dataclass
class Pg:
    """The local server the bench uses (trust auth or the libpq environment's password)."""

    host: str
    port: int
    user: str

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(base or os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user)
        return env

    def fields(self, dbname: str) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def sql(self, query: str, dbname: str = "postgres") -> str:
        out = subprocess.run(
            ["psql", "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", query],
            capture_output=True,
            text=True,
            env=self.env(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout.strip()

    def exists(self, dbname: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'") == "1"

    def recreate(self, dbname: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        self.sql(
            f"CREATE DATABASE \"{dbname}\" TEMPLATE template0 ENCODING 'UTF8' "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )

    def drop(self, dbname: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


# --- data ---------------------------------------------------------------------------------


def build_data(pg: Pg, size: str, votes: int | None = None, dbname: str | None = None) -> dict:
    """(Re)build the reproducible voting database of about ``size``."""
    from pg_backup.sample_db import create_sample_db

    name = dbname or db_name(size)
    started = time.monotonic()
    if votes is not None:
        made = create_sample_db(pg.dsn(), name, votes=votes, replace=True)
    else:
        made = create_sample_db(pg.dsn(), name, size=size, replace=True)
    print(
        f"bench-data: {name}: {made['votes']:,} votes, {made['bytes'] / 1e9:.3f} GB "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return made


# --- one size ---------------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario in one repetition: one command or several (our stages) in sequence."""

    scenario: str
    rep: int
    parts: list[Measurement]
    output_bytes: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        walls = [m.wall for m in self.parts]
        return {
            "scenario": self.scenario,
            "rep": self.rep,
            "wall": sum(walls),
            "cpu": sum(m.cpu for m in self.parts),
            "server_cpu": sum(m.server_cpu for m in self.parts),
            "peak_rss_ours": max(m.peak_rss_ours for m in self.parts),
            "peak_rss_server": max(m.peak_rss_server for m in self.parts),
            "output_bytes": self.output_bytes,
            "parts": [m.to_dict() for m in self.parts],
            "notes": self.notes,
        }


class SizeBench:
    """Every scenario on one database, ``repeat`` times."""

    def __init__(
        self,
        pg: Pg,
        size: str,
        work: Path,
        s3_endpoint: str | None,
        airflow_env: dict,
        recipient: str,
        log: Path,
        dbname: str | None = None,
    ):
        self.scheduler: SchedulerStack | None = None
        self.pg = pg
        self.size = size
        self.db = dbname or db_name(size)
        self.work = work
        self.s3_endpoint = s3_endpoint
        self.airflow_env = airflow_env
        self.log = log
        self.results: list[Result] = []
        self.config = work / "pg_backup.yaml"
        self.recipient = recipient
        work.mkdir(parents=True, exist_ok=True)
        self._write_config()

    # -- plumbing

    def _write_config(self) -> None:
        import yaml

        def target(**extra: Any) -> dict[str, Any]:
            doc: dict[str, Any] = {
                "source_conn_id": "bench_src",
                "scratch_conn_id": "bench_scratch",
                "staging_dir": str(self.work / "staging"),
                "storage": {"url": f"file://{self.work / 'storage'}"},
                "encryption": {"recipients": [self.recipient]},
                "alerts": {"emails": []},
            }
            doc.update(extra)
            return doc

        targets = {
            "bench": target(),
            "benchj2": target(dump={"jobs": 2}),
            "benchdag": target(staging_dir=str(self.work / "staging-dag")),
            "benchsched": target(staging_dir=str(self.work / "staging-sched")),
        }
        if self.s3_endpoint:
            targets["benchs3"] = target(
                storage={"url": "s3://pgb-bench/backups", "aws_conn_id": "bench_s3"}
            )
        self.config.write_text(yaml.safe_dump({"targets": targets}))

    def _run_info(self, target: str, rep: int, staging_of: str | None = None) -> dict[str, Any]:
        from pg_backup.core import layout

        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=rep)
        backup = layout.backup_id(target, when, "scheduled")
        staging_target = staging_of or target
        staging_id = layout.backup_id(staging_target, when, "scheduled")
        return {
            "target": target,
            "kind": "scheduled",
            "backup_id": backup,
            "taken_at": when.isoformat(),
            "dag_id": f"pg_backup_{target}",
            "run_id": f"bench__{when.isoformat()}",
            "staging": str(self.work / "staging" / staging_target / staging_id),
        }

    def _stage(
        self,
        stage: str,
        target: str,
        rep: int,
        records: Path,
        databases: list[str],
        staging_of: str | None = None,
        database: str | None = None,
    ) -> Measurement:
        records.mkdir(parents=True, exist_ok=True)
        spec = {
            "config": str(self.config),
            "target": target,
            "run": self._run_info(target, rep, staging_of),
            "records": str(records),
            "pg": {
                "bench_src": self.pg.fields(self.db),
                "bench_scratch": self.pg.fields("postgres"),
            },
            "s3_endpoint": self.s3_endpoint,
            "database": database,
        }
        path = records / f"{stage}.spec.json"
        path.write_text(json.dumps(spec))
        m = run_measured(
            f"{stage}",
            [PY, "-m", "tests.benchmarks.stages", stage, str(path)],
            env=_clean_env(),
            cwd=REPO,
            databases=databases,
            log=self.log,
        )
        cost = json.loads((records / f"{stage}.cost.json").read_text())
        m.extra.update(cost, children_hwm=_children_peak(m))
        _own_peak(m, cost["self_hwm"])
        return m

    def _cmd(
        self, label: str, argv: list[str], databases: list[str], stdout: Path | None = None
    ) -> Measurement:
        return run_measured(
            label,
            argv,
            env=self.pg.env(_clean_env()),
            cwd=self.work,
            databases=databases,
            log=self.log,
            stdout=stdout,
        )

    # -- scenarios

    def run_a(self, rep: int) -> list[Result]:
        sql = self.work / "cron.sql"
        m = self._cmd(
            "pg_dump | gzip",
            ["sh", "-c", f'pg_dump -f "{sql}" "{self.db}" && gzip -f "{sql}"'],
            [self.db],
        )
        gz = sql.with_name(sql.name + ".gz")
        size = gz.stat().st_size
        gz.unlink()
        return [Result("A", rep, [m], size)]

    def run_b_e(self, rep: int) -> list[Result]:
        dump = self.work / "b.dump"
        b = self._cmd("pg_dump -Fc", ["pg_dump", "-Fc", "-f", str(dump), self.db], [self.db])
        fresh = f"pgb_bench_e_{rep}"
        self.pg.recreate(fresh)
        e = self._cmd(
            "pg_restore -j2",
            ["pg_restore", "-j2", "--no-owner", "--no-privileges", "-d", fresh, str(dump)],
            [fresh],
        )
        restored = int(self.pg.sql("SELECT pg_database_size(current_database())", fresh))
        self.pg.drop(fresh)
        out = [Result("B", rep, [b], dump.stat().st_size), Result("E", rep, [e], restored)]
        dump.unlink()
        return out

    def run_c(self, rep: int) -> list[Result]:
        c = self._cmd("pg_dump -Fc -Z0", ["pg_dump", "-Fc", "-Z0", self.db], [self.db])
        tree = self.work / "c-j2"
        shutil.rmtree(tree, ignore_errors=True)
        c2 = self._cmd(
            "pg_dump -Fd -j2", ["pg_dump", "-Fd", "-j2", "-Z0", "-f", str(tree), self.db], [self.db]
        )
        size = sum(p.stat().st_size for p in tree.iterdir())
        shutil.rmtree(tree)
        # What one pass without staged intermediates would cost (the same zstd level as ours).
        from pg_backup.core.config import CompressConfig

        level = CompressConfig().level
        out = self.work / "stream.zst.age"
        stream = self._cmd(
            "pg_dump | zstd | age",
            [
                "sh",
                "-c",
                (
                    f'pg_dump -Fc -Z0 "{self.db}" | zstd -q -{level} -T0 '
                    f'| age -r {self.recipient} > "{out}"'
                ),
            ],
            [self.db],
        )
        streamed = out.stat().st_size
        out.unlink()
        # R: the floor of the verification restore, from C's dump kept in a file (untimed).
        plain = self.work / "c.dump"
        subprocess.run(
            ["pg_dump", "-Fc", "-Z0", "-f", str(plain), self.db],
            check=True,
            env=self.pg.env(_clean_env()),
        )
        fresh = f"pgb_bench_rr_{rep}"
        self.pg.recreate(fresh)
        r = self._cmd(
            "pg_restore -j2 --no-owner",
            ["pg_restore", "-j2", "--no-owner", "-d", fresh, str(plain)],
            [fresh],
        )
        self.pg.drop(fresh)
        plain.unlink()
        return [
            Result("C", rep, [c]),
            Result("C-j2", rep, [c2], size),
            Result("S", rep, [stream], streamed),
            Result("R", rep, [r]),
        ]

    def _ours(self, rep: int, target: str, key: str) -> list[Result]:
        records = self.work / "records" / f"{key}-{rep}"
        shutil.rmtree(records, ignore_errors=True)
        parts = [self._stage(s, target, rep, records, [self.db]) for s in STAGES]
        encrypted = json.loads((records / "encrypt.json").read_text())
        dumped = json.loads((records / "dump.json").read_text())
        notes = {"dump_bytes": dumped["dump"]["bytes"], "dump_format": dumped["dump_format"]}
        results = [Result(key, rep, parts, encrypted["data"]["bytes"], notes)]
        if key == "D" and self.s3_endpoint:
            s3_records = self.work / "records" / f"D-s3-{rep}"
            shutil.rmtree(s3_records, ignore_errors=True)
            shutil.copytree(records, s3_records)
            up = self._stage("upload", "benchs3", rep, s3_records, [], staging_of=target)
            results.append(
                Result("D-s3", rep, parts[:-1] + [up], encrypted["data"]["bytes"], notes)
            )
            _empty_bucket(self.s3_endpoint)
        fresh = f"pgb_bench_r_{key.lower().replace('-', '_')}_{rep}"
        self.pg.recreate(fresh)
        restore = self._stage("restore", target, rep, records, [fresh], database=fresh)
        verify = self._stage("verify", target, rep, records, [fresh], database=fresh)
        restored = int(self.pg.sql("SELECT pg_database_size(current_database())", fresh))
        self.pg.drop(fresh)
        results.append(Result("E-ours" + key[1:], rep, [restore, verify], restored))
        if key == "D" and rep == 0:
            staged = Path(self._run_info(target, rep)["staging"]) / "db.dump"
            self.level_sweep = level_sweep(staged, self.work)
        shutil.rmtree(self.work / "staging", ignore_errors=True)
        shutil.rmtree(self.work / "storage", ignore_errors=True)
        return results

    def run_d(self, rep: int) -> list[Result]:
        return self._ours(rep, "bench", "D")

    def run_dj2(self, rep: int) -> list[Result]:
        return self._ours(rep, "benchj2", "D-j2")

    def run_f(self, rep: int) -> list[Result]:
        from pg_backup.core import layout

        records = self.work / "records" / f"F-{rep}"
        shutil.rmtree(records, ignore_errors=True)
        records.mkdir(parents=True)
        when = datetime(2026, 6, 1, tzinfo=UTC) + timedelta(hours=rep)
        scratch = layout.scratch_db_name(layout.backup_id("benchdag", when, "scheduled"))
        spec = {
            "config": str(self.config),
            "target": "benchdag",
            "records": str(records),
            "run": self._run_info("benchdag", rep),
            "run_after": when.isoformat(),
        }
        path = records / "dagtest.spec.json"
        path.write_text(json.dumps(spec))
        env = dict(
            _clean_env(),
            **self.airflow_env,
            PG_BACKUP_CONFIG=str(self.config),
            AIRFLOW_CONN_BENCH_SRC=json.dumps(_conn(self.pg, self.db)),
            AIRFLOW_CONN_BENCH_SCRATCH=json.dumps(_conn(self.pg, "postgres")),
        )
        m = run_measured(
            "dag.test()",
            [PY, "-m", "tests.benchmarks.stages", "dagtest", str(path)],
            env=env,
            cwd=REPO,
            databases=[self.db, scratch],
            log=self.log,
        )
        cost = json.loads((records / "dagtest.cost.json").read_text())
        m.extra.update(cost, children_hwm=_children_peak(m))
        _own_peak(m, cost["self_hwm"])
        stored = [p for p in (self.work / "storage").rglob("db.dump.zst.age")]
        size = stored[0].stat().st_size if stored else None
        shutil.rmtree(self.work / "storage", ignore_errors=True)
        shutil.rmtree(self.work / "staging-dag", ignore_errors=True)
        return [Result("F", rep, [m], size)]

    def run_g(self, rep: int) -> list[Result]:
        if self.scheduler is None:
            self.scheduler = SchedulerStack(
                self.work / "airflow-sched", self._scheduler_env(), self.log
            )
        stats = self.scheduler.run_once("pg_backup_emergency_benchsched", f"bench rep {rep}")
        m = Measurement(
            "scheduler run", stats["wall"], 0.0, 0 if stats["state"] == "success" else 1
        )
        m.extra.update(stats)
        stored = [p for p in (self.work / "storage").rglob("db.dump.zst.age")]
        size = stored[0].stat().st_size if stored else None
        shutil.rmtree(self.work / "storage", ignore_errors=True)
        shutil.rmtree(self.work / "staging-sched", ignore_errors=True)
        if stats["state"] != "success":
            raise RuntimeError(f"the scheduled run ended {stats['state']}: {stats['tasks']}")
        return [Result("G", rep, [m], size, {"tasks": stats["tasks"]})]

    def _scheduler_env(self) -> dict[str, str]:
        return dict(
            _clean_env(),
            PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            PG_BACKUP_CONFIG=str(self.config),
            AIRFLOW_CONN_BENCH_SRC=json.dumps(_conn(self.pg, self.db)),
            AIRFLOW_CONN_BENCH_SCRATCH=json.dumps(_conn(self.pg, "postgres")),
        )

    def close(self) -> None:
        """Stop the scheduler stack, if one was started."""
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None

    def run(self, repeat: int, only: set[str] | None = None) -> None:
        groups: list[tuple[set[str], Callable[[int], list[Result]]]] = [
            ({"A"}, self.run_a),
            ({"B", "E"}, self.run_b_e),
            ({"C", "C-j2", "S"}, self.run_c),
            ({"D", "D-s3", "E-ours"}, self.run_d),
            ({"D-j2", "E-ours-j2"}, self.run_dj2),
            ({"F"}, self.run_f),
            ({"G"}, self.run_g),
        ]
        if only:
            groups = [g for g in groups if g[0] & only]
        self.level_sweep: dict[str, Any] | None = None
        print(f"[{self.size}] warming the cache: pg_dump -Fc -Z0 > /dev/null", flush=True)
        self._cmd("warm-up", ["pg_dump", "-Fc", "-Z0", self.db], [])
        for rep in range(repeat):
            shift = rep % len(groups)
            for _, runner in groups[shift:] + groups[:shift]:
                started = time.monotonic()
                done = runner(rep)
                self.results.extend(done)
                shown = ", ".join(f"{r.scenario} {r.to_dict()['wall']:.1f}s" for r in done)
                print(
                    f"[{self.size} rep {rep + 1}/{repeat}] {shown} "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )

    def facts(self) -> dict[str, Any]:
        """Database size and the share of its largest table (bounds what pg_dump -j can do)."""
        total = int(self.pg.sql("SELECT pg_database_size(current_database())", self.db))
        rows = self.pg.sql(
            "SELECT c.relname, pg_table_size(c.oid) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public' "
            "ORDER BY 2 DESC",
            self.db,
        ).splitlines()
        tables = [(r.split("|")[0], int(r.split("|")[1])) for r in rows]
        data = sum(b for _, b in tables) or 1
        return {
            "db": self.db,
            "db_bytes": total,
            "tables": tables,
            "largest_table": tables[0][0] if tables else None,
            "largest_share": tables[0][1] / data if tables else None,
        }


def _children_peak(m: Measurement) -> int:
    """Sampled peak RSS of the largest process a stage started (pg_dump, pg_restore)."""
    roots = [p for p in m.procs if p.role == "ours"]
    root = min((p.pid for p in roots), default=None)
    return max([0] + [p.peak_rss for p in roots if p.pid != root])


def _own_peak(m: Measurement, peak: int) -> None:
    """Put the peak a stage process reported itself (read at its exit) on its entry."""
    roots = [p for p in m.procs if p.role == "ours"]
    if roots:
        root = min(roots, key=lambda p: p.pid)
        root.peak_rss = max(root.peak_rss, peak)


def _clean_env() -> dict[str, str]:
    """This environment without libpq or Airflow settings (each scenario sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PG", "AIRFLOW", "AWS_"))}


def _conn(pg: Pg, dbname: str) -> dict[str, Any]:
    return {
        "conn_type": "postgres",
        "host": pg.host,
        "port": pg.port,
        "login": pg.user,
        "schema": dbname,
    }


def _empty_bucket(endpoint: str) -> None:
    client = bench_s3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="pgb-bench"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="pgb-bench", Key=item["Key"])


SWEEP_BYTES = 64 * 1024 * 1024
SWEEP_SLICES = 4
SWEEP_LEVELS = (1, 3, 6, 9, 12, 15, 19)


def sweep_sample(dump: Path, total: int = SWEEP_BYTES, slices: int = SWEEP_SLICES) -> bytes:
    """``total`` bytes of ``dump`` in ``slices`` equal slices spread evenly through the file.

    Spread rather than the first bytes: pg_dump writes one table after another, so the head of
    the file is one table's rows (the largest, "AuditLog", sorts first) and says little of the
    others'. The whole file when it is smaller than ``total``.
    """
    size = dump.stat().st_size
    if size <= total:
        return dump.read_bytes()
    part = total // slices
    step = (size - part) // max(slices - 1, 1)
    with dump.open("rb") as handle:
        chunks = []
        for i in range(slices):
            handle.seek(i * step)
            chunks.append(handle.read(part))
    return b"".join(chunks)


def level_sweep(dump: Path, work: Path) -> dict[str, Any]:
    """zstd levels against gzip -6 on the same sample of the staged dump: bytes and speed.

    Evidence for the artifact-size target: the ratio our zstd level reaches, and what the
    higher levels would cost in compress time, measured on 64 MiB spread through the dump
    (``sweep_sample``); level 19 stands for the most zstd can do on this data.
    """
    import zstandard

    sample = sweep_sample(dump)
    out: dict[str, Any] = {"sample_bytes": len(sample), "levels": []}
    started = time.monotonic()
    gz = subprocess.run(["gzip", "-6", "-c"], input=sample, capture_output=True, check=True)
    out["gzip6"] = {"bytes": len(gz.stdout), "seconds": time.monotonic() - started}
    for level in SWEEP_LEVELS:
        started = time.monotonic()
        packed = zstandard.ZstdCompressor(level=level, threads=-1).compress(sample)
        out["levels"].append(
            {"level": level, "bytes": len(packed), "seconds": time.monotonic() - started}
        )
        if level == SWEEP_LEVELS[-1]:
            continue  # the top level stands alone; --long there only adds minutes
        # Long-distance matching (zstd --long=27): repeats further apart than the level's window.
        params = zstandard.ZstdCompressionParameters.from_level(
            level, enable_ldm=True, window_log=27, threads=-1
        )
        started = time.monotonic()
        packed = zstandard.ZstdCompressor(compression_params=params).compress(sample)
        out["levels"].append(
            {
                "level": level,
                "long": True,
                "bytes": len(packed),
                "seconds": time.monotonic() - started,
            }
        )
    return out


# --- services ---------------------------------------------------------------------------------


class SchedulerStack:
    """``deploy/airflow.sh all`` (scheduler, dag-processor, triggerer, api-server; LocalExecutor,
    parallelism 4, SQLite) in a session of its own; runs are triggered and read through the CLI
    and the metadata database."""

    def __init__(self, home: Path, env: dict[str, str], log: Path):
        import socket

        home.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.home = home
        self.env = dict(
            env,
            AIRFLOW_HOME=str(home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
            PG_BACKUP_API_PORT=str(port),
            PG_BACKUP_API_HOST="127.0.0.1",
        )
        self.proc = subprocess.Popen(
            [str(REPO / "deploy" / "airflow.sh"), "all"],
            env=self.env,
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.unpaused: set[str] = set()

    def _airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "airflow", *args], env=self.env, capture_output=True, text=True
        )

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import sqlite3

        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def run_once(self, dag_id: str, reason: str, timeout: float = 3600) -> dict[str, Any]:
        """Trigger one run, wait for its end; its wall seconds and every task's times."""
        deadline = time.monotonic() + timeout
        while dag_id not in self.unpaused:
            try:
                rows = self._query("SELECT is_paused FROM dag WHERE dag_id=?", dag_id)
            except Exception:  # noqa: BLE001 - the metadata database is still being made
                rows = []
            if rows and not rows[0][0]:
                self.unpaused.add(dag_id)
                break
            if rows:
                self._airflow("dags", "unpause", dag_id)
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the scheduler stack never parsed " + dag_id)
            time.sleep(3)
        run_id = f"bench__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
        done = self._airflow(
            "dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps({"reason": reason})
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        while True:
            rows = self._query(
                "SELECT state, start_date, end_date FROM dag_run WHERE dag_id=? AND run_id=?",
                dag_id,
                run_id,
            )
            if rows and rows[0][0] in ("success", "failed"):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{dag_id} {run_id} did not end")
            time.sleep(1)
        state, start, end = rows[0]
        tasks = {
            task: {"state": st, "start": s, "end": e}
            for task, st, s, e in self._query(
                "SELECT task_id, state, start_date, end_date FROM task_instance "
                "WHERE dag_id=? AND run_id=?",
                dag_id,
                run_id,
            )
        }

        def ts(value: str) -> float:
            return datetime.fromisoformat(value).timestamp()

        return {"state": state, "wall": ts(end) - ts(start), "tasks": tasks}

    def stop(self) -> None:
        """TERM the launcher (it KILLs its process group), then KILL whatever of the session is left."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # the session id: this stack's processes
                try:
                    os.kill(int(stat.parent.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait()


class S3Server:
    """moto's S3 server as a child process on a free loopback port."""

    def __init__(self, log: Path):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = Path(PY).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),
            start_new_session=True,  # noqa: SIM115
            env=dict(_clean_env(), AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench"),
        )

        deadline = time.monotonic() + 60
        while True:
            try:
                bench_s3_client(self.endpoint).create_bucket(Bucket="pgb-bench")
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def airflow_home(work: Path, log: Path) -> dict[str, str]:
    """A throwaway Airflow home with a migrated SQLite metadata database, for dag.test()."""
    home = work / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    }
    with open(log, "ab") as err:
        subprocess.run(
            [PY, "-m", "airflow", "db", "migrate"],
            env=dict(_clean_env(), **env),
            stdout=err,
            stderr=err,
            check=True,
        )
    return env


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import zstandard

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout
            return out.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(
        (
            int(x.split()[1]) * 1024
            for x in Path("/proc/meminfo").read_text().splitlines()
            if x.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_bytes": mem,
        "python": platform.python_version(),
        "pg_dump": version(["pg_dump", "--version"]),
        "gzip": version(["gzip", "--version"]),
        "zstandard": zstandard.__version__,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


# --- command line -----------------------------------------------------------------------------


COMPILED = [
    sysconfig.get_paths()["purelib"],
    sysconfig.get_paths()["platlib"],
    str(REPO / "plugins"),
    str(REPO / "dags"),
    str(REPO / "tests"),
]


def run_bench(
    pg: Pg,
    sizes: list[str],
    repeat: int,
    out: Path,
    *,
    only: set[str] | None = None,
    dbname: str | None = None,
    keep_work: bool = False,
    docs: Path | None = None,
) -> dict[str, Any]:
    """Measure every size, write results.json, report.md and bench.png into ``out``."""
    from pyrage import x25519

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = out / "bench.log"
    log.write_text("")
    recipient = str(x25519.Identity.generate().to_public())
    doc: dict[str, Any] = {
        "machine": machine(),
        "repeat": repeat,
        "sizes": [],
        "started": datetime.now(UTC).isoformat(),
    }
    for size in sizes:
        name = dbname or db_name(size)
        if not pg.exists(name):
            print(
                f"bench: {name} does not exist: building it (make bench-data SIZE={size})",
                flush=True,
            )
            build_data(pg, size, dbname=name)
    # Every process measured imports byte-compiled modules, as a pip-installed deployment does:
    # with PYTHONDONTWRITEBYTECODE set (as on this kind of machine) nothing else writes them, and
    # each stage process would compile what it imports again (about 0.5 s each, measured by
    # tests/benchmarks/startup.py).
    subprocess.run(
        [PY, "-m", "compileall", "-q", "-j", "0", *COMPILED],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    s3 = None if only and not ({"D-s3"} & only) else S3Server(log)
    try:
        af_env = airflow_home(work, log) if not only or "F" in only else {}
        for size in sizes:
            bench = SizeBench(
                pg, size, work / size, s3.endpoint if s3 else None, af_env, recipient, log, dbname
            )
            facts = bench.facts()
            try:
                bench.run(repeat, only)
            finally:
                bench.close()
            doc["sizes"].append(
                {
                    "size": size,
                    **facts,
                    "level_sweep": bench.level_sweep,
                    "results": [r.to_dict() for r in bench.results],
                }
            )
            _publish(doc, out, docs)  # a later size failing does not lose this one
    finally:
        if s3:
            s3.stop()
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    _publish(doc, out, docs)
    return doc


def _publish(doc: dict[str, Any], out: Path, docs: Path | None = None) -> None:
    """Write results.json, report.md and bench.png for the sizes measured so far.

    With ``docs``: also ``benchmark.md``, ``benchmark.png`` and ``benchmark.json`` there.
    """
    from tests.benchmarks import report

    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["finished"] = datetime.now(UTC).isoformat()
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    if doc["sizes"]:
        report.write(doc, out)
        if docs is not None:
            docs.mkdir(parents=True, exist_ok=True)
            report.write(doc, docs, "benchmark.md", "benchmark.png")
            (docs / "benchmark.json").write_text(json.dumps(_without_work(doc), indent=1))


def _without_work(doc: dict[str, Any]) -> dict[str, Any]:
    """The results without per-process detail (the docs copy stays small)."""
    sizes = []
    for size in doc["sizes"]:
        rows = [{k: v for k, v in r.items() if k != "parts"} for r in size["results"]]
        sizes.append({**size, "results": rows})
    return {**doc, "sizes": sizes}


def add_pg_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --user of the bench's PostgreSQL server (libpq's variables by default)."""
    parser.add_argument("--host", default=os.environ.get("PGHOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument(
        "--user", default=os.environ.get("PGUSER") or os.environ.get("USER") or "postgres"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench")
    add_pg_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="(re)build the bench database(s)")
    data.add_argument("--size", action="append", required=True, help="e.g. 0.25G, 1G, 4G")
    data.add_argument("--votes", type=int, help="build this many votes instead (tests)")
    data.add_argument("--db", help="database name instead of pgb_bench_<size> (tests)")
    run = sub.add_parser("run", help="measure and write the report")
    run.add_argument("--size", action="append", required=True)
    run.add_argument("--repeat", type=int, default=3)
    run.add_argument("--out", type=Path, default=REPO / "bench-results")
    run.add_argument("--only", help="comma-separated scenarios (default: all)")
    run.add_argument("--db", help="database name instead of pgb_bench_<size> (tests)")
    run.add_argument("--keep-work", action="store_true", help="keep out/work for a look")
    run.add_argument("--docs", type=Path, help="also write benchmark.md/.png/.json here")
    args = parser.parse_args(argv)
    pg = Pg(args.host, args.port, args.user)
    if args.command == "data":
        for size in args.size:
            build_data(pg, size, votes=args.votes, dbname=args.db)
        return 0
    from tests.benchmarks import report

    only = set(args.only.split(",")) if args.only else None
    doc = run_bench(
        pg,
        args.size,
        args.repeat,
        args.out,
        only=only,
        dbname=args.db,
        keep_work=args.keep_work,
        docs=args.docs,
    )
    print(f"\nreport: {args.out / 'report.md'}  chart: {args.out / 'bench.png'}\n")
    print(report.ratios_text(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
