"""``make demo``: a sample voting database backed up for real by the Airflow DAG, end to end.

Everything lives under ``.demo/``: a throwaway age key, ``file://`` storage, staging and an
Airflow home on SQLite. The DAG runs through the real ``airflow dags test`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEMO = Path(os.environ.get("PG_BACKUP_DEMO_DIR", REPO / ".demo"))
TARGET = "voting"
DEMO_DB = "pgb_demo_voting"
DEFAULT_DSN = "host=127.0.0.1 port=5432 dbname=postgres"
VOTES = int(os.environ.get("PG_BACKUP_DEMO_VOTES", "300000"))


def _dsn_fields(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}


def _conn_json(fields: dict[str, str], dbname: str) -> str:
    extra = {k: fields[k] for k in ("sslmode", "sslrootcert") if k in fields}
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": fields.get("host", "127.0.0.1"),
            "port": int(fields.get("port", 5432)),
            "login": fields.get("user") or os.environ.get("USER") or "postgres",
            "password": fields.get("password"),
            "schema": dbname,
            "extra": extra,
        }
    )


def _key() -> str:
    """A throwaway age key pair for the demo; the private half stays in .demo/ (0600)."""
    from pyrage import x25519

    path = DEMO / "age-key.txt"
    if not path.exists():
        identity = x25519.Identity.generate()
        path.write_text(f"# throwaway demo key\n{identity}\n")
        path.chmod(0o600)
    secret = next(line for line in path.read_text().splitlines() if line.startswith("AGE-"))
    return str(x25519.Identity.from_str(secret).to_public())


def _config(recipient: str) -> Path:
    import yaml

    path = DEMO / "pg_backup.yaml"
    doc = {
        "defaults": {
            "scratch_conn_id": "pg_backup_demo_scratch",
            "staging_dir": str(DEMO / "staging"),
            "storage": {"url": f"file://{DEMO / 'storage'}"},
            "encryption": {"recipients": [recipient]},
            "retry_delay": "5s",
            "alerts": {"emails": []},
        },
        "targets": {TARGET: {"source_conn_id": "pg_backup_demo_source"}},
    }
    path.write_text("# written by make demo\n" + yaml.safe_dump(doc, sort_keys=False))
    return path


def _env(config: Path, fields: dict[str, str]) -> dict[str, str]:
    home = DEMO / "airflow"
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "PG_BACKUP_CONFIG": str(config),
            # Connections reach Airflow through the environment, never through argv.
            "AIRFLOW_CONN_PG_BACKUP_DEMO_SOURCE": _conn_json(fields, DEMO_DB),
            "AIRFLOW_CONN_PG_BACKUP_DEMO_SCRATCH": _conn_json(
                fields, fields.get("dbname", "postgres")
            ),
        }
    )
    return env


def _airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        code = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(
            f"airflow {' '.join(args)} failed (exit {code}); end of {log}:\n" + "\n".join(tail)
        )


def _summary(config: Path) -> dict[str, Any]:
    from pg_backup.adapters.storage import open_storage
    from pg_backup.core.config import load_config
    from pg_backup.core.layout import MANIFEST_OBJECT, VERIFICATION_OBJECT
    from pg_backup.core.manifest import Manifest, Verification

    cfg = load_config(config).target(TARGET)
    store = open_storage(cfg.storage)
    keys = sorted(o.key for o in store.list(f"{TARGET}/") if o.key.endswith(MANIFEST_OBJECT))
    if not keys:
        sys.exit("the DAG run finished but no manifest is in storage: see .demo/dags-test.log")
    manifest = Manifest.from_bytes(store.get_bytes(keys[-1]))
    prefix = keys[-1][: -len(MANIFEST_OBJECT)]
    verification = Verification.from_bytes(store.get_bytes(prefix + VERIFICATION_OBJECT))
    return {"manifest": manifest, "verification": verification, "where": store.describe(prefix)}


def prepare(rebuild: bool = True) -> tuple[Path, dict[str, str]]:
    """Sample database, throwaway key, config and environment under .demo/."""
    from pg_backup.sample_db import create_sample_db

    DEMO.mkdir(parents=True, exist_ok=True)
    dsn = os.environ.get("PG_BACKUP_DEMO_DSN", DEFAULT_DSN)
    fields = _dsn_fields(dsn)
    marker = DEMO / "sample-db.json"
    if rebuild or not marker.exists():
        print(f"sample voting database {DEMO_DB} ({VOTES:,} votes) ...", flush=True)
        info = create_sample_db(dsn, DEMO_DB, votes=VOTES, replace=True)
        marker.write_text(json.dumps(info))
        print(f"    {info['bytes'] / 1e6:,.0f} MB on {fields.get('host', 'localhost')}")
    config = _config(_key())
    return config, _env(config, fields)


def airflow() -> None:
    """``make airflow``: every Airflow component on the demo config, until Ctrl-C."""
    _, env = prepare(rebuild=False)
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(DEMO / "ui-login.json"),
        }
    )
    os.execvpe(
        str(REPO / "deploy" / "airflow.sh"), [str(REPO / "deploy" / "airflow.sh"), "all"], env
    )


def main() -> int:
    """Build the sample database, run the daily DAG for real, print what it produced."""
    print("1/4 ", end="")
    config, env = prepare()
    log = DEMO / "dags-test.log"
    log.write_text("")
    print("2/4 Airflow metadata database (SQLite) ...", flush=True)
    _airflow(["db", "migrate"], env, log)
    print(f"3/4 airflow dags test pg_backup_{TARGET} (log: {log}) ...", flush=True)
    started = time.monotonic()
    _airflow(["dags", "test", f"pg_backup_{TARGET}"], env, log)
    seconds = time.monotonic() - started
    result = _summary(config)
    manifest, verification = result["manifest"], result["verification"]
    print(f"4/4 done in {seconds:.0f} s\n")
    print(f"  backup id     {manifest.backup_id}")
    print(f"  dump          {manifest.dump_bytes / 1e6:,.1f} MB (pg_dump custom format)")
    print(
        f"  stored        {manifest.data.bytes / 1e6:,.1f} MB ({manifest.compression} + age), "
        f"ratio {manifest.dump_bytes / max(manifest.data.bytes, 1):.1f}x"
    )
    print(
        f"  verification  {verification.status}: {verification.relations_checked} relations, "
        f"{verification.rows_checked:,} rows restored exactly "
        f"(restore {verification.restore_seconds:.1f} s)"
    )
    if verification.proven:
        print(
            f"  proven        {', '.join(verification.proven)} ({verification.content_checked} "
            f"relations by content, {verification.objects_checked} objects)"
        )
    print(f"  files         {result['where']}")
    print(f"  private key   {DEMO / 'age-key.txt'} (throwaway, demo only)")
    print(f"  Airflow log   {log}")
    print(
        "\nRestore by hand with stock tools:\n"
        f"  age -d -i {DEMO / 'age-key.txt'} {result['where'].removeprefix('file://')}"
        "db.dump.zst.age | zstd -d | pg_restore --no-owner -d <empty database>"
    )
    return 0 if verification.status == "verified" else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["airflow"]:
        airflow()
    raise SystemExit(main())
