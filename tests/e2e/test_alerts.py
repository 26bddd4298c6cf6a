"""End-to-end: the alerts of pg_backup under a real scheduler, dag-processor, triggerer and API.

Every run is triggered through the public REST API with the payload of the UI's trigger form;
every mail is read from a real SMTP server. The scenarios run one after the other on one stack
(see conftest.py for the targets and why each one is slow, tight or broken).
"""

from __future__ import annotations

import collections
import re
import time
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.message import Message
from typing import Any
from urllib.parse import quote, unquote

import httpx
import psycopg
import pytest

from pg_backup.core import layout
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.e2e.conftest import (
    ALERT_TO,
    HEALTHY_SLA_S,
    SLOW_SLA_S,
    TIGHT_PREFLIGHT_BUDGET_S,
    Stack,
)

pytestmark = pytest.mark.e2e

STAGES = [
    "preflight",
    "dump",
    "compress",
    "encrypt",
    "upload",
    "create_scratch_db",
    "restore",
    "verify",
    "mark_verified",
    "drop_scratch_db",
    "cleanup_staging",
]
# Time from a deadline to its mail: the scheduler's next loop finds it, the triggerer runs
# the callback, the SMTP round trip. A couple of seconds when idle.
DEADLINE_SLACK_S = 15.0
RUN_TIMEOUT_S = 150.0
LOCK_HOLD_S = 8.0  # how long the tight target's source stays locked


# --- helpers ------------------------------------------------------------------------------


def subject(mail: Message) -> str:
    """The decoded, unfolded subject."""
    return " ".join(str(make_header(decode_header(str(mail["Subject"])))).split())


def body(mail: Message) -> str:
    """Every text part, decoded."""
    parts = [p for p in mail.walk() if p.get_content_maintype() == "text"]
    return "\n".join(
        (p.get_payload(decode=True) or b"").decode(p.get_content_charset() or "utf-8", "replace")
        for p in parts
    )


def recipients(mail: Message) -> set[str]:
    """Envelope recipients (what the SMTP server was told), not just the To header."""
    return {r.strip() for r in str(mail["X-Envelope-To"]).split(",") if r.strip()}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def fmt(value: datetime) -> str:
    """How the SLA mail writes a time."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_link(stack: Stack, dag_id: str, run_id: str) -> str:
    return f"{stack.base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def about(*words: str) -> Any:
    """Match mails whose subject or body contains every word."""
    return lambda m: all(w in subject(m) or w in body(m) for w in words)


def sla_mails(stack: Stack, target: str) -> list[Message]:
    prefix = f"[pg-backup] SLA missed: no verified backup of {target} by "
    return stack.mails(lambda m: subject(m).startswith(prefix))


def budget_mails(stack: Stack, target: str) -> list[Message]:
    prefix = f"[pg-backup] over budget: {target} "
    return stack.mails(lambda m: subject(m).startswith(prefix))


class SourceLock:
    """ACCESS EXCLUSIVE on one table of a source database, held by a real session."""

    def __init__(self, dbname: str, table: str = 'public."Vote"') -> None:
        self.conn = psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=False
        )
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        self.taken = time.monotonic()

    def waiting(self) -> int:
        """How many other sessions are waiting for a lock in that database right now."""
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
        ) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE NOT l.granted AND d.datname = %s",
                    (self.conn.info.dbname,),
                ).fetchone()[0]
            )

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


# --- 1. a healthy emergency run --------------------------------------------------------------


def test_emergency_backup_via_rest_api_succeeds_and_mails_nothing(airflow_stack: Stack) -> None:
    """A UI-form REST trigger ends green, reads back whole, mails nobody even past its SLA."""
    stack = airflow_stack
    dag_id = "pg_backup_emergency_healthy"
    before = len(stack.mails())

    run = stack.trigger(dag_id, "e2e: healthy emergency backup")
    run_id = run["dag_run_id"]
    assert run["logical_date"] is None and run["conf"]["reason"] == "e2e: healthy emergency backup"
    assert run["state"] == "queued", run
    queued_at = parse_time(run["queued_at"])

    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    states = {task: ti["state"] for task, ti in tis.items()}
    assert ended["state"] == "success", states

    # Read back like the UI's run page does.
    again = stack.run(dag_id, run_id)
    assert again["state"] == "success"
    assert again["run_type"] == "manual" and again["triggered_by"] == "rest_api"
    assert again["triggering_user_name"] == "admin"
    assert again["conf"] == {"reason": "e2e: healthy emergency backup"}
    assert set(STAGES) <= set(states), states
    assert all(state == "success" for state in states.values()), states
    assert all(ti["try_number"] == 1 for ti in tis.values()), {
        t: ti["try_number"] for t, ti in tis.items()
    }
    history = stack.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after"})
    assert [(r["dag_run_id"], r["state"]) for r in history["dag_runs"]] == [(run_id, "success")]

    # The scheduler ran the verification restore beside compress -> encrypt -> upload (their
    # task instances overlap in time), and marked the set verified only after both.
    def span(*tasks: str) -> tuple[datetime, datetime]:
        return (
            min(parse_time(tis[t]["start_date"]) for t in tasks),
            max(parse_time(tis[t]["end_date"]) for t in tasks),
        )

    storing = span("compress", "encrypt", "upload")
    proving = span("restore", "verify")
    assert proving[0] < storing[1] and storing[0] < proving[1], (storing, proving)
    assert parse_time(tis["dump"]["end_date"]) <= min(storing[0], proving[0])
    # The scratch database is made once preflight read the source's locale, beside the dump.
    made = span("create_scratch_db")
    assert parse_time(tis["preflight"]["end_date"]) <= made[0] and made[1] <= proving[0]
    assert parse_time(tis["mark_verified"]["start_date"]) >= max(storing[1], proving[1])

    # What the green run stands for: a complete, verified set in storage.
    manifests = list((stack.storage_root / "healthy").rglob("manifest.json"))
    assert len(manifests) == 1, manifests
    assert '"verified"' in (manifests[0].parent / "verification.json").read_text()

    # The SLA deadline is wired (so "no SLA mail" below is not vacuous) ...
    alerts = stack.ui_api(f"/dags/{dag_id}/deadlineAlerts")["deadline_alerts"]
    assert [(a["name"], a["reference_type"], a["interval"]) for a in alerts] == [
        ("pg_backup_sla_healthy", "DagRunQueuedAtDeadline", float(HEALTHY_SLA_S))
    ]
    # ... and a run that ends green in time never mails it: wait until well past the deadline.
    deadline = queued_at + timedelta(seconds=HEALTHY_SLA_S)
    wait = (deadline - datetime.now(UTC)).total_seconds() + DEADLINE_SLACK_S
    assert parse_time(ended["end_date"]) < deadline, "the healthy run was slower than its SLA"
    time.sleep(max(wait, 2.0))
    stack.assert_alive()
    new = stack.mails()[before:]
    assert not new, [subject(m) for m in new]
    assert not stack.mails(about("healthy")), "mail about the healthy target"


# --- 2. SLA miss -------------------------------------------------------------------------------


def test_sla_miss_mails_once_with_run_link_while_source_is_locked(airflow_stack: Stack) -> None:
    """Source locked, the run misses its 20 s SLA: one SLA mail to the DBAs, linking the run."""
    stack = airflow_stack
    dag_id = "pg_backup_emergency_slow"
    assert not sla_mails(stack, "slow")

    lock = SourceLock(stack.sources["slow"])
    try:
        run = stack.trigger(dag_id, "e2e: SLA miss")
        run_id = run["dag_run_id"]
        deadline = parse_time(run["queued_at"]) + timedelta(seconds=SLOW_SLA_S)

        mail = stack.wait_mail(
            lambda m: subject(m).startswith("[pg-backup] SLA missed: no verified backup of slow"),
            timeout=SLOW_SLA_S + 60,
            what="SLA-miss mail for target slow",
        )
        seen = datetime.now(UTC)
        # Still blocked by the lock when the mail came: the run really was late, not failed.
        assert lock.waiting() >= 1, "nothing waits for the lock: the source was not slowed"
        assert stack.run(dag_id, run_id)["state"] == "running"

        assert seen >= deadline, f"SLA mail before the deadline ({seen} < {deadline})"
        assert (
            subject(mail)
            == f"[pg-backup] SLA missed: no verified backup of slow by {fmt(deadline)}"
        )
        assert ALERT_TO in recipients(mail), recipients(mail)
        assert ALERT_TO in str(mail["To"])
        text = body(mail)
        link = run_link(stack, dag_id, run_id)
        assert f'href="{link}"' in text, text
        assert unquote(link.rsplit("/", 1)[1]) == run_id
        assert run_id in text and "within the SLA of 20s" in text, text
        assert "<td>State when checked</td><td>running</td>" in text, text

        # The deadline the run page shows is the one that was missed, once.
        deadlines = stack.ui_api(f"/dags/{dag_id}/dagRuns/{run_id}/deadlines")["deadlines"]
        assert [(d["alert_name"], d["missed"]) for d in deadlines] == [("pg_backup_sla_slow", True)]
        assert abs((parse_time(deadlines[0]["deadline_time"]) - deadline).total_seconds()) < 1

        # The link opens the run in the UI (the api-server serves the UI's pages).
        page = httpx.get(link, timeout=10, follow_redirects=True)
        assert page.status_code == 200 and "<html" in page.text.lower()

        # Exactly one: several more scheduler loops later, still one.
        time.sleep(6)
        assert len(sla_mails(stack, "slow")) == 1, [subject(m) for m in sla_mails(stack, "slow")]
        # The AsyncCallback ran in the triggerer (Airflow 3.3 logs its callback trigger's end).
        triggerer_log = (stack.home / "logs" / "triggerer.log").read_text(errors="replace")
        assert "CallbackState.SUCCESS" in triggerer_log, stack.log_tails(30, ("triggerer",))
    finally:
        lock.release()  # the run goes on and may finish; test 5 checks it ends green


# --- 3. stage over budget ------------------------------------------------------------------


def test_stage_over_budget_mails_once_and_run_still_succeeds(airflow_stack: Stack) -> None:
    """Preflight held ~8 s by a lock overruns its 3 s budget: one budget mail, run still green."""
    stack = airflow_stack
    dag_id = "pg_backup_emergency_tight"
    assert not budget_mails(stack, "tight")

    lock = SourceLock(stack.sources["tight"])
    try:
        run = stack.trigger(dag_id, "e2e: over budget")
        run_id = run["dag_run_id"]
        stack.wait_task_state(dag_id, run_id, "preflight", {"running"}, timeout=60)
        while lock.waiting() < 1 and time.monotonic() - lock.taken < 60:
            time.sleep(0.2)
        assert lock.waiting() >= 1, "preflight does not wait for the lock"
        time.sleep(LOCK_HOLD_S)
        # The budget only warns: no mail while the stage is still going.
        assert not budget_mails(stack, "tight")
    finally:
        lock.release()

    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    assert ended["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    assert tis["preflight"]["try_number"] == 1 and tis["preflight"]["duration"] >= LOCK_HOLD_S

    mail = stack.wait_mail(
        about("[pg-backup] over budget: tight"), timeout=10, what="budget mail for target tight"
    )
    time.sleep(2)
    mails = budget_mails(stack, "tight")
    assert len(mails) == 1, [subject(m) for m in mails]
    assert re.fullmatch(
        r"\[pg-backup\] over budget: tight preflight took \d+\.\d min \(budget 0\.1 min\)",
        subject(mail),
    ), subject(mail)
    assert ALERT_TO in recipients(mail)
    text = body(mail)
    took = re.search(r"ended \(success\) after (\d+) s; its budget is (\d+) s", text)
    assert took, text
    assert int(took.group(1)) >= LOCK_HOLD_S and int(took.group(2)) == TIGHT_PREFLIGHT_BUDGET_S
    assert f"<b>{dag_id}</b>" in text and run_link(stack, dag_id, run_id) in text, text
    # Only this target and stage: no SLA mail, no failure mail about it.
    assert not sla_mails(stack, "tight")
    assert not stack.mails(about("FAILED", "tight"))


# --- 4. permanent failure ---------------------------------------------------------------------


def test_permanent_dump_failure_mails_once_after_last_retry(airflow_stack: Stack) -> None:
    """pg_dump fails on all 3 tries: one FAILED mail after the last try, no retry mail."""
    stack = airflow_stack
    dag_id = "pg_backup_emergency_broken"
    assert not stack.mails(about("broken"))

    run = stack.trigger(dag_id, "e2e: broken dump")
    run_id = run["dag_run_id"]
    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    states = {t: ti["state"] for t, ti in tis.items()}
    assert ended["state"] == "failed", states
    assert states["preflight"] == "success" and states["dump"] == "failed", states
    for task in ("compress", "encrypt", "upload", "restore", "verify"):
        assert states[task] == "upstream_failed", states
    # Retried: three tries in all (retries: 2), every one failed.
    assert tis["dump"]["try_number"] == 3
    tries = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/dump/tries")
    history = sorted((t["try_number"], t["state"]) for t in tries["task_instances"])
    assert [n for n, _ in history] == [1, 2, 3], history
    assert history[-1][1] == "failed", history
    assert all(state in ("failed", "up_for_retry") for _, state in history), history

    mail = stack.wait_mail(about("FAILED", "broken"), timeout=15, what="failure mail for broken")
    time.sleep(3)  # anything else (a second copy, a retry mail) would have come by now
    about_broken = stack.mails(about("broken"))
    assert len(about_broken) == 1, [subject(m) for m in about_broken]
    assert subject(mail) == f"[pg-backup] FAILED: broken {dag_id}.dump ({run_id})"
    assert not stack.mails(lambda m: "retrying" in subject(m)), "retry mail without on_retry"
    assert ALERT_TO in recipients(mail)
    text = body(mail)
    assert "failed after its last retry (try 3)" in text, text
    assert "no matching schemas were found" in text, text  # pg_dump's own words reach the DBA


# --- 4b. clearing one task of a green run ----------------------------------------------------


def test_clearing_upload_of_a_green_run_keeps_its_verified_set(airflow_stack: Stack) -> None:
    """Clearing only upload of a green run (the UI's Clear, downstream unticked) reruns it as a no-op: the run stays green, the set whole and verified."""
    import hashlib
    import json

    stack = airflow_stack
    dag_id = "pg_backup_emergency_healthy"
    run_id = stack.trigger(dag_id, "e2e: clear its upload afterwards")["dag_run_id"]
    assert stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)["state"] == "success"
    (set_dir,) = [
        m.parent
        for m in (stack.storage_root / "healthy").rglob("manifest.json")
        if json.loads(m.read_text())["run_id"] == run_id
    ]
    backup_id = set_dir.name

    def contents() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in set_dir.iterdir()}

    before = contents()
    assert set(before) == set(layout.SET_OBJECTS)
    assert not (stack.staging_root / "healthy" / backup_id).exists()  # cleaned after success

    rerun = stack.clear(dag_id, run_id, ["upload"])
    # Airflow clears a task's setup and teardown with it (preflight, cleanup_staging), never
    # the stages downstream of it: restore and verify keep their results.
    assert "upload" in rerun and rerun <= {"preflight", "upload", "cleanup_staging"}, rerun
    upload = stack.wait_task_state(
        dag_id, run_id, "upload", {"success", "failed"}, RUN_TIMEOUT_S, min_try=2
    )
    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    assert (upload["state"], upload["try_number"]) == ("success", 2), upload
    assert ended["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    assert all(tis[t]["try_number"] == 1 for t in ("dump", "restore", "verify")), tis
    # Nothing was withdrawn or rewritten: the set the green run stands for is whole.
    assert contents() == before
    assert '"verified"' in (set_dir / "verification.json").read_text()


# --- 5. no duplicates ------------------------------------------------------------------------


def test_no_mail_is_sent_twice(airflow_stack: Stack) -> None:
    """Once every run has ended, each subject was mailed once and only the expected mails came."""
    stack = airflow_stack
    if not stack.triggered:
        pytest.skip("run together with the scenario tests: nothing was triggered")
    # Every run of the session ends (the SLA run goes on once its lock is released).
    for dag_id, run_id in stack.triggered:
        ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
        if dag_id == "pg_backup_emergency_slow":
            assert ended["state"] == "success", "the late run did not finish after the lock went"
    time.sleep(5)  # late or repeated callbacks would arrive now

    subjects = [subject(m) for m in stack.mails()]
    counts = collections.Counter(subjects)
    duplicated = {s: n for s, n in counts.items() if n > 1}
    assert not duplicated, duplicated
    kinds = collections.Counter(
        next((k for k in ("SLA missed", "over budget", "FAILED", "retrying") if k in s), s)
        for s in subjects
    )
    expected = collections.Counter()
    ran = {dag_id for dag_id, _ in stack.triggered}
    expected.update({"SLA missed": 1} if "pg_backup_emergency_slow" in ran else {})
    expected.update({"over budget": 1} if "pg_backup_emergency_tight" in ran else {})
    expected.update({"FAILED": 1} if "pg_backup_emergency_broken" in ran else {})
    assert kinds == expected, subjects
