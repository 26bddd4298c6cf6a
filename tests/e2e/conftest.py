"""A real Airflow 3 deployment for end-to-end tests: ``deploy/airflow.sh all`` on a tmp home.

One stack per session (20-45 s to come up): scheduler, dag-processor, triggerer and
api-server started by the project's own launcher, in their own session and process group,
talking to a fresh SQLite metadata DB. The pg_backup config holds one target per scenario,
each with its own source database on the real PostgreSQL:

* ``healthy``  defaults, a short-ish SLA: must end green and mail nothing;
* ``slow``     a 20 s SLA, its source is blocked by a lock the test holds: SLA-miss mail;
* ``tight``    a 3 s preflight budget, its source blocked ~8 s by a lock: one budget mail;
* ``broken``   ``dump.schemas: [no_such_schema]``: pg_dump fails on every try: one failure mail;
* ``shown``    mails nobody: its backup, drill and sweep fill the Backups page (test_backups_page).

Mail goes to the aiosmtpd sink of ``tests/conftest.py``; storage is ``file://`` under tmp.
The user-facing surface is used like a user would: the simple auth manager's login
(``POST /auth/token``) and the public REST API (``/api/v2``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO, AgeKeys, MailSink, free_port, pg_conn_json, psql
from tests.integration.conftest import RICH_SCHEMA
from tests.integration.fake_sets import RECIPIENT

pytestmark = pytest.mark.e2e

# Its own address: the SMTP sink is shared with the integration tests that ran earlier on the
# same worker, and only the stack's mail counts here.
ALERT_TO = "e2e-dba@test.invalid"
SMTP_CONN_ID = "pgb_test_smtp"  # AIRFLOW_CONN_PGB_TEST_SMTP is set by the smtp_sink fixture
SCRATCH_CONN_ID = "pgb_e2e_scratch"
START_TIMEOUT = 240.0  # seconds for init + every component + the first parse of the DAGs

# Per-scenario settings (merged over the defaults written by the fixture).
HEALTHY_SLA_S = 90  # a green run took 35-50 s; 60 was missed once at load 9
SLOW_SLA_S = 20
TIGHT_PREFLIGHT_BUDGET_S = 3
TARGETS: dict[str, dict[str, Any]] = {
    "healthy": {"sla": f"{HEALTHY_SLA_S}s"},
    # pg_dump must still be waiting for the lock when the SLA passes.
    "slow": {"sla": f"{SLOW_SLA_S}s", "dump": {"lock_wait_timeout": "2m"}},
    # Only the preflight budget is tiny; its timeout (10 min default) stays far larger.
    "tight": {"budgets": {"preflight": f"{TIGHT_PREFLIGHT_BUDGET_S}s"}},
    # The database exists (preflight passes) but pg_dump finds nothing to dump and exits 1.
    "broken": {"dump": {"schemas": ["no_such_schema"]}},
    # The Backups page's target: its drill and sweep must not add mails the alert tests count.
    # The older sets its test writes directly (tests/integration/fake_sets.py) name a key of
    # their own; listing it as retired makes them this deployment's sets, as real ones are.
    "shown": {"alerts": {"emails": []}, "encryption": {"retired_recipients": [RECIPIENT]}},
    # Two destinations (3-2-1), the second unreachable until its test unblocks it: the
    # destinations are filled in by _write_config (they live under the stack's directory).
    # No mail, so the alert tests' counts stay theirs.
    "copies": {"alerts": {"emails": []}},
}
# The file that stands where the `gone` destination of target `copies` should be: until it is
# removed, nothing can be written there.
BLOCKED = "blocked"
# A logged-in user with no role: may read no DAG (the page must refuse them).
NO_ROLE_USER = "nobody"


def _set_child_subreaper(on: bool) -> None:
    """Adopt orphaned descendants (Linux), so their zombies are ours to reap, not init's.

    When the launcher's group is killed, the components' children lose their parents; without
    this they linger as ``<defunct>`` until PID 1 gets round to them.
    """
    import ctypes

    pr_set_child_subreaper = 36
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, int(on), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _session_pids(sid: int, zombies: bool = False) -> list[int]:
    """Every process of a session (the launcher's, started with start_new_session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and (zombies or fields[0] != "Z"):
            pids.append(int(entry.name))
    return pids


@dataclass
class Stack:
    """A running Airflow deployment plus the services and databases it was wired to."""

    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    sink: MailSink
    sources: dict[str, str]  # target -> source database
    storage_root: Path
    staging_root: Path
    config_path: Path
    password: str = ""
    token: str = ""
    triggered: list[tuple[str, str]] = field(default_factory=list)  # (dag_id, run_id)
    _client: httpx.Client | None = field(default=None, repr=False)

    # --- HTTP ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=30.0)
        return self._client

    def login(self) -> str:
        """Log in like a user of the simple auth manager: POST /auth/token."""
        users = json.loads(
            Path(self.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
        )
        username, self.password = next(iter(users.items()))
        resp = self.client.post(
            "/auth/token", json={"username": username, "password": self.password}
        )
        assert resp.status_code == 201, f"login failed: {resp.status_code} {resp.text}"
        self.token = resp.json()["access_token"]
        return self.token

    def api(self, method: str, path: str, *, prefix: str = "/api/v2", **kwargs: Any) -> Any:
        """Call /api/v2 with the bearer token; return the JSON body, failing on any non-2xx."""
        if not self.token:
            self.login()
        resp = self.client.request(
            method, f"{prefix}{path}", headers={"Authorization": f"Bearer {self.token}"}, **kwargs
        )
        if resp.status_code == 401:  # token expired: log in again, once
            self.login()
            resp = self.client.request(
                method,
                f"{prefix}{path}",
                headers={"Authorization": f"Bearer {self.token}"},
                **kwargs,
            )
        assert resp.is_success, f"{method} {prefix}{path}: {resp.status_code} {resp.text[:2000]}"
        return resp.json() if resp.content else None

    def ui_api(self, path: str, **kwargs: Any) -> Any:
        """GET a route of the UI's own API (/ui), e.g. the deadlines the run page shows."""
        return self.api("GET", path, prefix="/ui", **kwargs)

    # --- DAG runs -----------------------------------------------------------------------

    def trigger(self, dag_id: str, reason: str) -> dict[str, Any]:
        """What the UI's trigger form sends for the emergency DAG (no logical date)."""
        run = self.api(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": {"reason": reason}},
        )
        self.triggered.append((dag_id, run["dag_run_id"]))
        return run

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> set[str]:
        """Clear these tasks of one run as the UI's "Clear" does (not upstream, not downstream);
        return the task ids Airflow cleared (it adds their setups and teardowns)."""
        cleared = self.api(
            "POST",
            f"/dags/{dag_id}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "include_upstream": False,
                "include_downstream": False,
            },
        )
        return {ti["task_id"] for ti in cleared["task_instances"]}

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """task_id -> task instance record of one run."""
        body = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """Poll the run until it ends (success or failed); fail with its task states if not."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_alive()
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                states = {t: ti["state"] for t, ti in self.task_instances(dag_id, run_id).items()}
                pytest.fail(
                    f"{dag_id} {run_id} still {run['state']} after {timeout:.0f}s; tasks: {states}"
                    f"\n{self.log_tails(40)}"
                )
            time.sleep(1.0)

    def wait_task_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: set[str],
        timeout: float,
        min_try: int = 0,
    ) -> dict[str, Any]:
        """Poll one task instance until it reaches one of the states (in try ``min_try`` or later)."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_alive()
            ti = self.task_instances(dag_id, run_id).get(task_id)
            if ti is not None and ti["state"] in states and ti["try_number"] >= min_try:
                return ti
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{dag_id}.{task_id} ({run_id}) is {ti and ti['state']}, "
                    f"not one of {states} after {timeout:.0f}s\n{self.log_tails(40)}"
                )
            time.sleep(0.5)

    # --- mail ---------------------------------------------------------------------------

    def mails(self, match: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """The stack's mails (sent to ALERT_TO) that match."""
        with self.sink.lock:
            return [
                m for m in self.sink.messages if ALERT_TO in str(m["X-Envelope-To"]) and match(m)
            ]

    def wait_mail(
        self, match: Callable[[Message], bool], timeout: float, what: str = "mail"
    ) -> Message:
        """The first captured mail that matches, within timeout (fails listing what came)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.mails(match)
            if found:
                return found[0]
            time.sleep(0.25)
        subjects = [str(m["Subject"]) for m in self.mails()]
        pytest.fail(
            f"no {what} within {timeout:.0f}s; mails so far: {subjects}\n"
            f"{self.log_tails(30, ('triggerer', 'scheduler'))}"
        )

    # --- processes ----------------------------------------------------------------------

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"deploy/airflow.sh all exited with {self.proc.returncode}\n{self.log_tails()}"
            )

    def log_tails(self, lines: int = 60, only: tuple[str, ...] | None = None) -> str:
        """The tail of every component log (what a person would look at first)."""
        out = []
        for log in sorted((self.home / "logs").glob("*.log")):
            if only and log.stem not in only:
                continue
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {log} (last {len(text)} lines) -----\n" + "\n".join(text))
        launcher = self.home / "launcher.log"
        if launcher.exists() and not only:
            out.append(
                f"----- {launcher} -----\n"
                + "\n".join(launcher.read_text(errors="replace").splitlines()[-lines:])
            )
        return "\n".join(out) or f"(no logs under {self.home / 'logs'})"

    def stop(self) -> list[str]:
        """TERM the process group, wait, KILL what is left; return what had to be killed."""
        sid = self.proc.pid  # start_new_session: the launcher leads its session and group
        if self.proc.poll() is None:
            try:
                os.killpg(sid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = []
        for pid in _session_pids(sid):
            try:
                leftovers.append(
                    Path(f"/proc/{pid}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                    .strip()
                )
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        # Reap the adopted dead (see _set_child_subreaper) so that nothing is left, not even
        # a zombie.
        deadline = time.monotonic() + 15
        while _session_pids(sid, zombies=True) and time.monotonic() < deadline:
            for pid in _session_pids(sid, zombies=True):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            time.sleep(0.1)
        if self._client is not None:
            self._client.close()
        return leftovers


def _write_config(path: Path, stack_dirs: dict[str, Path], age: AgeKeys, port: int) -> None:
    doc = {
        "defaults": {
            "scratch_conn_id": SCRATCH_CONN_ID,
            "staging_dir": str(stack_dirs["staging"]),
            "storage": {"url": f"file://{stack_dirs['storage']}"},
            "encryption": {"recipients": [age.public]},
            "retries": 2,
            "retry_delay": "1s",
            "max_retry_delay": "2s",
            "alerts": {
                "emails": [ALERT_TO],
                "smtp_conn_id": SMTP_CONN_ID,
                "from_email": "pg-backup@test.invalid",
                "base_url": f"http://127.0.0.1:{port}",
            },
        },
        "targets": {
            name: {"source_conn_id": f"pgb_e2e_src_{name}", **settings}
            for name, settings in TARGETS.items()
        },
    }
    blocked = stack_dirs["storage"].parent / BLOCKED
    blocked.write_text("a file where a directory should be: the destination is down\n")
    doc["targets"]["copies"]["destinations"] = [
        {"name": "nas", "url": f"file://{stack_dirs['storage']}"},
        {"name": "gone", "url": f"file://{blocked}/gone"},
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def airflow_env(home: Path) -> dict[str, str]:
    """The environment of a stack's Airflow processes: this one's, without its Airflow and
    pg_backup settings, with this virtualenv first on PATH and the repository's DAGs and plugins.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "PG_BACKUP_", "PYTEST_"))
    }
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        }
    )
    return env


def _drop_databases(sources: dict[str, str]) -> None:
    """The source databases, and scratch databases a killed run may have left behind.

    The scratch databases' names hold the target's name but not this session's suffix, so
    another e2e session on the same server may be using one of them right now: those are
    dropped without FORCE, and one still in use is left to its owner (its own teardown drops it).
    """
    for db in sources.values():
        psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    # pgb_verify_<target>_<time>_emergency
    mine = " OR ".join(f"datname LIKE 'pgb\\_verify\\_{n}\\_%\\_emergency'" for n in TARGETS)
    mine += " OR " + " OR ".join(f"datname LIKE 'pgb\\_drill\\_{n}\\_%'" for n in TARGETS)
    for row in psql(f"SELECT datname FROM pg_database WHERE {mine}").splitlines():
        try:
            psql(f'DROP DATABASE IF EXISTS "{row}"')
        except RuntimeError as exc:  # psql's error: in use by a concurrent session's run
            if "is being accessed by other users" not in str(exc):
                raise


def _wait_ready(stack: Stack) -> None:
    """API answers, login works, every DAG of the config is parsed; else fail with the logs."""
    expected = {f"pg_backup_{kind}{name}" for name in TARGETS for kind in ("", "emergency_")}
    deadline = time.monotonic() + START_TIMEOUT
    stage = "api-server to answer"
    last = ""
    while time.monotonic() < deadline:
        stack.assert_alive()
        try:
            if stage == "api-server to answer":
                resp = stack.client.get("/api/v2/monitor/health", timeout=5)
                if resp.status_code != 200:
                    raise RuntimeError(f"health: {resp.status_code}")
                stage = "login"
            if stage == "login":
                stack.login()
                stage = "DAGs to be parsed"
            body = stack.api("GET", "/dags", params={"dag_id_pattern": "pg_backup", "limit": 100})
            found = {d["dag_id"] for d in body["dags"]}
            errors = stack.api("GET", "/importErrors")
            if errors["total_entries"]:
                pytest.fail(f"DAG import errors: {json.dumps(errors['import_errors'], indent=1)}")
            if expected <= found:
                health = stack.client.get("/api/v2/monitor/health").json()
                bad = {
                    k: v.get("status")
                    for k, v in health.items()
                    if isinstance(v, dict) and v.get("status") not in (None, "healthy")
                }
                if not bad:
                    return
                last = f"unhealthy components: {bad}"
            else:
                last = f"parsed so far: {sorted(found)}"
        except (httpx.HTTPError, RuntimeError, AssertionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1.0)
    pytest.fail(
        f"Airflow not ready after {START_TIMEOUT:.0f}s, waiting for {stage} ({last})\n"
        f"{stack.log_tails()}"
    )


@pytest.fixture(scope="session")
def airflow_stack(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_sink: MailSink,
    age_keys: AgeKeys,
    pg_server: None,
) -> Iterator[Stack]:
    """``deploy/airflow.sh all`` on a fresh home, every pg_backup DAG parsed, logged in."""
    # The sink is the session's: mail from tests that ran earlier on this worker (drill
    # reports, failures) is not this stack's, and the no-duplicates count must not see it.
    smtp_sink.clear()
    root = tmp_path_factory.mktemp("e2e")
    home = root / "airflow"
    home.mkdir()
    dirs = {"storage": root / "storage", "staging": root / "staging"}
    port = free_port()
    config_path = root / "pg_backup.yaml"
    _write_config(config_path, dirs, age_keys, port)

    suffix = uuid.uuid4().hex[:6]
    sources = {name: f"pgb_e2e_{name}_{suffix}" for name in TARGETS}
    try:
        for db in sources.values():
            psql(f'CREATE DATABASE "{db}"')
            psql(RICH_SCHEMA, db)
    except Exception:
        _drop_databases(sources)
        raise

    env = airflow_env(home)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Paused at creation, and only the emergency DAGs are unpaused below (as a user
            # would in the UI): with catchup off, an unpaused CronTriggerTimetable DAG runs its
            # latest past interval at once, so every scheduled DAG (backup, drill, sweep of each
            # target) would start a run of its own: three times the load, plus SLA and budget
            # mails of their own that the tests would have to tell apart.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "ui-login.json"),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{NO_ROLE_USER}:",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PG_BACKUP_CONFIG": str(config_path),
            "PG_BACKUP_API_PORT": str(port),
            "PG_BACKUP_API_HOST": "127.0.0.1",
            f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}": os.environ[
                f"AIRFLOW_CONN_{SMTP_CONN_ID.upper()}"
            ],
            f"AIRFLOW_CONN_{SCRATCH_CONN_ID.upper()}": pg_conn_json("postgres"),
            # The drills' private key (encryption.identity_conn_id's default).
            "AIRFLOW_CONN_PG_BACKUP_AGE_IDENTITY": json.dumps(
                {"conn_type": "generic", "password": age_keys.secret}
            ),
            **{
                f"AIRFLOW_CONN_PGB_E2E_SRC_{name.upper()}": pg_conn_json(db)
                for name, db in sources.items()
            },
        }
    )
    launcher_log = (home / "launcher.log").open("wb")
    _set_child_subreaper(True)
    try:
        proc = subprocess.Popen(
            [str(REPO / "deploy" / "airflow.sh"), "all"],
            env=env,
            cwd=str(root),
            stdout=launcher_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        _set_child_subreaper(False)
        launcher_log.close()
        _drop_databases(sources)
        raise
    # The sink is the worker's: mail from test files run before this one (dag.test() runs with
    # on_retry, say) must not count as this stack's.
    smtp_sink.clear()
    stack = Stack(
        home=home,
        port=port,
        env=env,
        proc=proc,
        sink=smtp_sink,
        sources=sources,
        storage_root=dirs["storage"],
        staging_root=dirs["staging"],
        config_path=config_path,
    )
    try:
        _wait_ready(stack)
        for name in TARGETS:
            stack.api(
                "PATCH",
                f"/dags/pg_backup_emergency_{name}",
                json={"is_paused": False},
                params={"update_mask": "is_paused"},
            )
        yield stack
    finally:
        leftovers = stack.stop()
        _set_child_subreaper(False)
        launcher_log.close()
        _drop_databases(sources)
        assert not leftovers, f"processes survived the launcher's TERM: {leftovers}"
        remaining = _session_pids(proc.pid, zombies=True)
        assert not remaining, f"processes of the stack still there after KILL: {remaining}"
