"""How long the dag-processor takes to parse the DAG file for many targets (offline).

Run: ``.venv/bin/python -m tests.benchmarks.parse_many --targets 100 --repeat 5``. Each repeat
is a fresh interpreter (as the dag-processor forks one per file) that imports Airflow first,
then times ``DagBag`` on the dags folder alone: the part the number of targets changes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys, time
import airflow.sdk  # noqa: F401 - loaded by the dag-processor before any DAG file
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "dags": len(bag.dag_ids), "errors": len(bag.import_errors)}))
"""


def many_targets(count: int, base: Path, recipient: str) -> dict[str, Any]:
    """A config of ``count`` targets on four source servers, object-store staging, pools."""
    return {
        "defaults": {
            "scratch_conn_id": "pg_backup_scratch",
            "staging_dir": str(base / "staging"),
            "staging_url": "s3://pgb-staging/runs",
            "storage": {"url": "s3://pgb-backups/sets"},
            "encryption": {"recipients": [recipient]},
            "alerts": {"emails": ["dba@example.org"]},
        },
        "targets": {
            f"db{i:03d}": {
                "source_conn_id": f"db{i:03d}",
                "pools": {"source_server": f"pg{i % 4}.example.org:5432"},
            }
            for i in range(count)
        },
    }


def parse_once(config: Path) -> dict[str, Any]:
    """One fresh interpreter parsing the dags folder with ``config``."""
    env = dict(os.environ)
    env.update(
        {
            "PG_BACKUP_CONFIG": str(config),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO / "dags")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure(count: int, repeat: int) -> dict[str, Any]:
    """Median and spread of ``repeat`` parses of a ``count``-target config."""
    from pyrage import x25519

    recipient = str(x25519.Identity.generate().to_public())
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pg_backup.yaml"
        config.write_text(yaml.safe_dump(many_targets(count, Path(tmp), recipient)))
        runs = [parse_once(config) for _ in range(repeat)]
    seconds = [r["seconds"] for r in runs]
    return {
        "targets": count,
        "dags": runs[0]["dags"],
        "errors": runs[0]["errors"],
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
    }


def main() -> None:
    """Print one JSON line per target count."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, action="append", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for count in args.targets or [1, 10, 100]:
        print(json.dumps(measure(count, args.repeat)))


if __name__ == "__main__":
    main()
