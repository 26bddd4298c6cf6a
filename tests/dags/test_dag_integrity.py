"""DAG integrity: the dags folder parses cleanly, cheaply and offline; house rules per DAG."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILE = DAGS / "backup_dags.py"

# The config written by the `config_file` fixture: two targets, different schedules and keep_days.
TARGETS = {
    "voting": {"schedule": "0 2 * * *", "keep_days": 90},  # both documented defaults
    "hr": {"schedule": "30 1 * * *", "keep_days": 14},
}
OWNER = "dba-team"
SCHEDULED = [f"pg_backup_{t}" for t in TARGETS]
EMERGENCY = [f"pg_backup_emergency_{t}" for t in TARGETS]
SWEEPS = [f"pg_retention_sweep_{t}" for t in TARGETS]
DRILLS = [f"pg_restore_drill_{t}" for t in TARGETS]
ALL_DAGS = SCHEDULED + EMERGENCY + SWEEPS + DRILLS
TEARDOWNS = {"drop_scratch_db", "cleanup_staging"}
# The layers that do I/O (psycopg, boto3, zstandard, subprocesses) load in tasks only; parsing
# may import the mail wrapper, which builds the failure and SLA callbacks.
IO_LAYERS = ("pg_backup.stages", "pg_backup.adapters", "pg_backup.sample_db")
PARSE_ALLOWED = {"pg_backup.adapters", "pg_backup.adapters.notify"}


def config_document(base: Path, recipient: str) -> dict[str, Any]:
    """A valid two-target config with file:// storage under ``base``."""
    return {
        "defaults": {
            "scratch_conn_id": "pg_backup_scratch",
            "owner": OWNER,
            "staging_dir": str(base / "staging"),
            "storage": {"url": f"file://{base / 'storage'}"},
            "encryption": {"recipients": [recipient]},
            "alerts": {"emails": ["dba@example.org"], "on_retry": True},
        },
        "targets": {
            "voting": {"source_conn_id": "voting_db"},
            "hr": {
                "source_conn_id": "hr_db",
                "schedule": TARGETS["hr"]["schedule"],
                "emergency": {"keep_days": TARGETS["hr"]["keep_days"]},
                "tags": ["payroll"],
            },
        },
    }


@pytest.fixture(scope="module")
def recipient() -> str:
    """A public key generated for this run."""
    from pyrage import x25519

    return str(x25519.Identity.generate().to_public())


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, recipient: str) -> Path:
    """The valid config, written where $PG_BACKUP_CONFIG points (set by tests/conftest.py)."""
    path = Path(os.environ["PG_BACKUP_CONFIG"])
    base = tmp_path_factory.mktemp("pgb-dags")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_document(base, recipient)))
    return path


def parse_dags_folder() -> Any:
    """Fill a DagBag from the repository's dags folder, as the dag-processor does."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dagbag(config_file: Path) -> Any:
    return parse_dags_folder()


def dag(dagbag: Any, dag_id: str) -> Any:
    # DagBag.get_dag would query the metadata DB; the parsed DAGs are in .dags.
    assert dag_id in dagbag.dags, f"{dag_id} not parsed; have {sorted(dagbag.dags)}"
    return dagbag.dags[dag_id]


# --- parsing ------------------------------------------------------------------------------


def test_dags_folder_imports_without_errors(dagbag: Any) -> None:
    """The folder parses with no import errors and yields exactly the expected DAG ids."""
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == sorted(ALL_DAGS)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make every connection lookup, psycopg connect, socket connect and SQL query fail loudly."""
    import psycopg
    import psycopg2
    from airflow.models.connection import Connection as ModelConnection
    from airflow.sdk import BaseHook, Connection, Variable
    from airflow.sdk.execution_time import context as task_context
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    calls: list[str] = []

    def forbid(what: str) -> Any:
        def raiser(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise AssertionError(f"{what} called while parsing DAGs")

        return raiser

    monkeypatch.setattr(BaseHook, "get_connection", forbid("BaseHook.get_connection"))
    monkeypatch.setattr(Connection, "get", forbid("Connection.get"))
    monkeypatch.setattr(Variable, "get", forbid("Variable.get"))
    monkeypatch.setattr(task_context, "_get_connection", forbid("context._get_connection"))
    monkeypatch.setattr(
        ModelConnection,
        "get_connection_from_secrets",
        forbid("Connection.get_connection_from_secrets"),
    )
    monkeypatch.setattr(psycopg, "connect", forbid("psycopg.connect"))
    monkeypatch.setattr(psycopg.Connection, "connect", forbid("psycopg.Connection.connect"))
    monkeypatch.setattr(psycopg2, "connect", forbid("psycopg2.connect"))
    monkeypatch.setattr(socket.socket, "connect", forbid("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", forbid("socket.create_connection"))

    def on_query(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        calls.append(f"SQL: {statement}")

    event.listen(Engine, "before_cursor_execute", on_query)
    try:
        yield calls
    finally:
        event.remove(Engine, "before_cursor_execute", on_query)


def test_parsing_makes_no_connection_lookup_or_query(config_file: Path, offline: list[str]) -> None:
    """With every lookup, connect and SQL query forbidden, the folder still parses cleanly."""
    bag = parse_dags_folder()
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == sorted(ALL_DAGS)
    assert offline == []


def test_invalid_config_is_an_import_error_naming_file_and_field(
    tmp_path: Path, recipient: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value surfaces as the DAG file's import error naming the config file and field."""
    doc = config_document(tmp_path, recipient)
    doc["targets"]["voting"]["compress"] = {"level": 23}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(path))
    bag = parse_dags_folder()
    assert bag.dag_ids == []
    assert len(bag.import_errors) == 1
    ((where, message),) = bag.import_errors.items()
    assert where.endswith("backup_dags.py")
    assert str(path) in message
    assert "targets.voting.compress.level" in message
    assert "23" in message


def test_missing_config_is_an_import_error_naming_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No config file: an import error that names the path and how to create it."""
    path = tmp_path / "absent" / "pg_backup.yaml"
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(path))
    bag = parse_dags_folder()
    assert bag.dag_ids == []
    (message,) = bag.import_errors.values()
    assert str(path) in message
    assert "pg_backup.example.yaml" in message


_PROBE = r"""
import importlib.util, json, sys
WATCH = ("boto3", "botocore", "pyrage", "zstandard", "psycopg", "psycopg2")
import airflow.sdk  # noqa: F401  (every DAG file needs it: what it imports is Airflow's doing)
before = {m for m in WATCH if m in sys.modules}
spec = importlib.util.spec_from_file_location("pgb_parse_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({
    "preloaded": sorted(before),
    "new": sorted(m for m in WATCH if m in sys.modules and m not in before),
    "pg_backup": sorted(m for m in sys.modules if m.split(".")[0] == "pg_backup"),
    "dags": sorted(k for k in vars(module) if k.startswith(("pg_backup_", "pg_retention_", "pg_restore_"))),
}))
"""


def _probe(config_file: Path, tmp_path: Path, dag_id: str | None = None) -> dict[str, Any]:
    """Import the DAG file in a fresh interpreter (as a task process of ``dag_id`` would)."""
    env = dict(os.environ)
    env["PG_BACKUP_CONFIG"] = str(config_file)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "plugins"), str(REPO), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
    if dag_id:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = dag_id
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAG_FILE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_task_process_builds_only_its_own_dag(config_file: Path, tmp_path: Path) -> None:
    """Under a task's parsing context the DAG file builds that one DAG and imports no other builder."""
    seen = _probe(config_file, tmp_path, "pg_backup_hr")
    assert seen["dags"] == ["pg_backup_hr"]
    assert "pg_backup.dags.drill" not in seen["pg_backup"]
    assert "pg_backup.dags.sweep" not in seen["pg_backup"]
    assert seen["new"] == [], f"parse-time imports: {seen['new']}"


def test_dag_file_import_stays_light(config_file: Path, tmp_path: Path) -> None:
    """Importing the DAG file (fresh interpreter) loads no boto3, pyrage, zstandard or psycopg."""
    seen = _probe(config_file, tmp_path)
    assert seen["dags"] == sorted(ALL_DAGS)
    # Heavy libraries the DAG file itself brings in (beyond what `import airflow.sdk` loads).
    assert seen["new"] == [], f"parse-time imports: {seen['new']}"
    # zstandard is preloaded by Airflow (httpx), so also check the I/O layers stay unloaded.
    loaded = [m for m in seen["pg_backup"] if m.startswith(IO_LAYERS) and m not in PARSE_ALLOWED]
    assert loaded == [], loaded


# --- house rules, per DAG -----------------------------------------------------------------


@pytest.mark.parametrize("dag_id", ALL_DAGS)
def test_dag_house_rules(dagbag: Any, dag_id: str) -> None:
    """Tags, an owner, doc_md, one active run at a time, no catchup."""
    target = next(t for t in TARGETS if dag_id.endswith(f"_{t}"))
    d = dag(dagbag, dag_id)
    assert d.tags, "no tags"
    assert {"pg_backup", target} <= set(d.tags)
    assert d.owner == OWNER
    assert d.doc_md
    assert target in d.doc_md
    assert d.max_active_runs == 1
    assert d.catchup is False


@pytest.mark.parametrize("dag_id", ALL_DAGS)
def test_task_house_rules(dagbag: Any, dag_id: str) -> None:
    """Every task: retries >= 2, an execution_timeout, a doc_md, an owner, failure mail."""
    d = dag(dagbag, dag_id)
    assert d.tasks
    for t in d.tasks:
        assert t.retries >= 2, f"{t.task_id}: retries={t.retries}"
        assert isinstance(t.execution_timeout, timedelta), f"{t.task_id}: no execution_timeout"
        assert t.execution_timeout > timedelta(0)
        assert t.doc_md, f"{t.task_id}: no doc_md"
        assert t.owner == OWNER
        assert t.on_failure_callback, f"{t.task_id}: no failure notification"


@pytest.mark.parametrize("dag_id", SCHEDULED + EMERGENCY + DRILLS)
def test_teardowns_are_teardowns(dagbag: Any, dag_id: str) -> None:
    """Scratch DB drop and staging cleanup are teardown tasks (they run whatever happened)."""
    d = dag(dagbag, dag_id)
    teardowns = {t.task_id for t in d.tasks if t.is_teardown}
    expected = {"drop_drill_dbs", "cleanup"} if dag_id in DRILLS else TEARDOWNS
    assert teardowns == expected


@pytest.mark.parametrize("target", list(TARGETS))
def test_scheduled_dag_uses_configured_cron(dagbag: Any, target: str) -> None:
    """pg_backup_<t> runs on the cron written in the config, and has no trigger form."""
    d = dag(dagbag, f"pg_backup_{target}")
    # A cron string, or a cron timetable built from it (e.g. one pinned to UTC).
    assert d.schedule in (TARGETS[target]["schedule"], d.timetable)
    assert d.timetable.expression == TARGETS[target]["schedule"]
    assert str(d.timetable.timezone) == "UTC"  # the example documents the cron as UTC
    assert "scheduled" in d.tags
    assert dict(d.params) == {}


@pytest.mark.parametrize("target", list(TARGETS))
def test_emergency_dag_is_manual_with_trigger_form(dagbag: Any, target: str) -> None:
    """pg_backup_emergency_<t>: no schedule; params reason (required), verify=true, keep_days."""
    d = dag(dagbag, f"pg_backup_emergency_{target}")
    assert d.schedule is None
    assert "emergency" in d.tags
    assert set(d.params.keys()) == {"reason", "verify", "keep_days"}
    defaults = d.params.dump()
    assert defaults["reason"] is None  # no default: the form requires a reason
    assert d.params.get_param("reason").schema["type"] == "string"
    assert d.params.get_param("reason").schema["minLength"] == 1
    assert defaults["verify"] is True
    assert defaults["keep_days"] == TARGETS[target]["keep_days"]
    assert d.params.get_param("keep_days").schema["minimum"] == 1


@pytest.mark.parametrize("dag_id", SCHEDULED + EMERGENCY)
def test_every_stage_is_a_task_named_after_it(dagbag: Any, dag_id: str) -> None:
    """Task ids are the stage names and carry that stage's timeout: budget mail follows them."""
    from pg_backup.core.config import load_config
    from pg_backup.core.names import CHECK_DESTINATIONS, BackupTask, Stage

    d = dag(dagbag, dag_id)
    target = next(t for t in TARGETS if dag_id.endswith(f"_{t}"))
    timeouts = load_config().target(target).timeouts
    for stage in Stage:
        assert d.get_task(stage.value).execution_timeout == getattr(timeouts, stage.value)
    expected = {t.value for t in BackupTask} | {s.value for s in Stage} | {CHECK_DESTINATIONS}
    assert expected == set(d.task_ids)


@pytest.mark.parametrize("dag_id", SCHEDULED + EMERGENCY)
def test_restore_branch_beside_the_upload_and_dumps_first(dagbag: Any, dag_id: str) -> None:
    """The restore depends on the dump only, its database is made beside the dump (from preflight); mark_verified on upload and verify; dumps outrank restores."""
    d = dag(dagbag, dag_id)
    task = d.get_task
    assert task("create_scratch_db").upstream_task_ids == {"preflight"}
    assert "create_scratch_db" not in task("dump").upstream_task_ids
    assert task("restore").upstream_task_ids == {"dump", "create_scratch_db", "preflight"}
    assert task("verify").upstream_task_ids == {"dump", "restore"}
    assert task("mark_verified").upstream_task_ids == {"upload", "verify"}
    assert task("mark_verified").trigger_rule == "all_done_min_one_success"
    assert [o.name for o in task("mark_verified").outlets] == [d.dag_id.replace("_emergency", "")]
    assert not task("verify").outlets
    assert "mark_verified" in task("cleanup_staging").upstream_task_ids

    def weight(task_id: str) -> int:
        t = task(task_id)
        assert "absolute" in str(t.weight_rule).lower(), (task_id, t.weight_rule)
        return int(t.priority_weight)

    restoring = max(weight(t) for t in ("create_scratch_db", "restore", "verify"))
    assert weight("dump") > weight("upload") > restoring
