"""The Backups page in a real browser, inside the real Airflow UI, over real runs.

On the shared e2e stack (conftest.py), target ``shown`` gets the demo's kinds of sets: a real
emergency backup (verified), a real restore drill of it, older sets written beside it like the
pipeline writes them (a verified scheduled one, a failed one, an incomplete one), then a real
retention sweep. Debian's chromium, driven by Playwright, logs in through the simple auth
manager's form, opens Browse > Backups and follows a set to the DAG run that made it.
Screenshots go to ``test-artifacts/e2e/`` (git-ignored; ``PG_BACKUP_TEST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from pg_backup.adapters.catalog_index import read_index
from pg_backup.adapters.storage import FileStorage
from tests.conftest import PG_HOST, PG_PORT, PG_USER, REPO, AgeKeys, psql
from tests.e2e.conftest import NO_ROLE_USER, Stack
from tests.integration.fake_sets import write_set

pytestmark = pytest.mark.e2e

TARGET = "shown"
RUN_TIMEOUT_S = 150.0
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that let Debian's chromium run headless as root in a container.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 90_000
ARTIFACTS = Path(os.environ.get("PG_BACKUP_TEST_ARTIFACTS", REPO / "test-artifacts")) / "e2e"


def wait_scheduled_run(stack: Stack, dag_id: str, timeout: float) -> dict[str, Any]:
    """Unpause a DAG (catchup off: the scheduler runs its latest interval now), wait, pause it."""
    stack.api(
        "PATCH", f"/dags/{dag_id}", json={"is_paused": False}, params={"update_mask": "is_paused"}
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            stack.assert_alive()
            runs = stack.api("GET", f"/dags/{dag_id}/dagRuns")["dag_runs"]
            if runs:
                return stack.wait_run(dag_id, runs[0]["dag_run_id"], deadline - time.monotonic())
            assert time.monotonic() < deadline, f"no run of {dag_id} after {timeout:.0f}s"
            time.sleep(1.0)
    finally:
        stack.api(
            "PATCH",
            f"/dags/{dag_id}",
            json={"is_paused": True},
            params={"update_mask": "is_paused"},
        )


@pytest.fixture(scope="module")
def shown(airflow_stack: Stack) -> dict[str, Any]:
    """The runs and sets of target ``shown``: what the page must show."""
    stack = airflow_stack
    store = FileStorage(f"file://{stack.storage_root}")
    dag_id = f"pg_backup_emergency_{TARGET}"
    run = stack.trigger(dag_id, "e2e: before the page test")
    ended = stack.wait_run(dag_id, run["dag_run_id"], RUN_TIMEOUT_S)
    assert ended["state"] == "success", stack.task_instances(dag_id, run["dag_run_id"])
    index = read_index(store, TARGET)
    assert index is not None, "the upload and verify tasks wrote no catalog index"
    [real] = index.sets
    assert (real.status, real.kind, real.run_id) == ("verified", "emergency", run["dag_run_id"])

    drill = wait_scheduled_run(stack, f"pg_restore_drill_{TARGET}", RUN_TIMEOUT_S)
    assert drill["state"] == "success", drill
    index = read_index(store, TARGET)
    assert index and index.sets[0].drill and index.sets[0].drill.outcome == "passed"
    assert index.sets[0].drill.run_id == drill["dag_run_id"]

    now = datetime.now(UTC).replace(microsecond=0)
    older = {
        "verified": write_set(store.put_bytes, TARGET, now - timedelta(days=2)),
        "failed": write_set(store.put_bytes, TARGET, now - timedelta(days=1), status="failed"),
        "incomplete": write_set(
            store.put_bytes, TARGET, now - timedelta(hours=20), status="incomplete"
        ),
    }
    sweep = wait_scheduled_run(stack, f"pg_retention_sweep_{TARGET}", RUN_TIMEOUT_S)
    states = {
        t: ti["state"]
        for t, ti in stack.task_instances(sweep["dag_id"], sweep["dag_run_id"]).items()
    }
    assert states["report"] == "success", states
    index = read_index(store, TARGET)
    assert index is not None
    assert {s.backup_id for s in index.sets} == {real.backup_id} | {
        f.backup_id for f in older.values()
    }, "the sweep's rebuild must list every set in storage"
    # Every set the sweep can prove its own has a fate; one without a manifest is held for a
    # human (nothing proves pg_backup wrote it), so the sweep plans nothing for it.
    planned = [s for s in index.sets if s.status != "incomplete"]
    assert all(s.retention is not None for s in planned if s.taken < now - timedelta(hours=6))
    assert [s.retention for s in index.sets if s.status == "incomplete"] == [None]
    return {"run": run, "real": real, "older": older, "drill": drill, "sweep": sweep}


def test_anonymous_and_roleless_users_are_refused(airflow_stack: Stack, shown):
    """No login: 401 everywhere; a logged-in user who may read no DAG: 403, no data either way."""
    stack = airflow_stack
    secret = shown["real"].backup_id
    for path in ("/pg-backup/", f"/pg-backup/api/targets/{TARGET}", "/pg-backup/metrics"):
        resp = httpx.get(f"{stack.base_url}{path}")
        assert resp.status_code == 401 and secret not in resp.text, (path, resp.status_code)
    users = json.loads(
        Path(stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
    )
    token = httpx.post(
        f"{stack.base_url}/auth/token",
        json={"username": NO_ROLE_USER, "password": users[NO_ROLE_USER]},
    ).json()["access_token"]
    resp = httpx.get(f"{stack.base_url}/pg-backup/", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 403 and secret not in resp.text


def test_metrics_stage_durations_are_the_runs_task_durations(airflow_stack: Stack, shown):
    """The newest verified set's stage durations come from its run's task instances."""
    stack = airflow_stack
    if not stack.token:
        stack.login()
    text = httpx.get(
        f"{stack.base_url}/pg-backup/metrics", headers={"Authorization": f"Bearer {stack.token}"}
    ).text
    run = shown["run"]
    tis = stack.task_instances(run["dag_id"], run["dag_run_id"])
    found = dict(
        re.findall(
            rf'pg_backup_stage_duration_seconds\{{stage="(\w+)",target="{TARGET}"\}} (\S+)', text
        )
    )
    assert set(found) == {"preflight", "dump", "compress", "encrypt", "upload", "restore", "verify"}
    for stage, value in found.items():
        assert abs(float(value) - tis[stage]["duration"]) < 0.11, (stage, value, tis[stage])
    assert f'pg_backup_sets{{status="failed",target="{TARGET}"}} 1.0' in text
    assert f'pg_backup_last_drill_passed{{target="{TARGET}"}} 1.0' in text


def test_restore_commands_on_the_page_restore_the_set(
    airflow_stack: Stack, shown, tmp_path, age_keys: AgeKeys
):
    """The stock-tools commands shown for the real set, run in a shell, restore it."""
    stack = airflow_stack
    body = stack.api("GET", f"/targets/{TARGET}", prefix="/pg-backup/api")
    row = next(s for s in body["sets"] if s["backup_id"] == shown["real"].backup_id)
    database = f"pgb_e2e_restored_{uuid.uuid4().hex[:8]}"
    script = row["restore_commands"]["stock"].replace(f"restored_{TARGET}", database)
    assert database in script  # the page's own database name was the only thing replaced
    (tmp_path / "key.txt").write_text(age_keys.secret + "\n")
    env = {**os.environ, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_USER}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert psql('SELECT count(*) FROM public."Vote"', database) == "3000"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_backups_page_in_the_airflow_ui(airflow_stack: Stack, shown):
    """Log in, Browse > Backups: rows, statuses, ages, drill; click through to the backup run."""
    from playwright.sync_api import expect, sync_playwright

    stack = airflow_stack
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    users = json.loads(
        Path(stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
    )
    real, older = shown["real"], shown["older"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            anonymous = browser.new_page()
            resp = anonymous.goto(f"{stack.base_url}/pg-backup/")
            assert resp is not None and resp.status == 401
            assert real.backup_id not in anonymous.content()

            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # The React UI's first load takes over 30 s (Playwright's default) at load 12.
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            page.goto(f"{stack.base_url}/auth/login/")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", users["admin"])
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(rf"^{re.escape(stack.base_url)}/?(\?.*)?$"))
            page.get_by_role("button", name="Browse").click()
            page.get_by_role("menuitem", name="Backups").click()
            page.wait_for_url(f"{stack.base_url}/plugin/backups")
            frame = page.frame_locator("iframe")
            frame.locator("nav.targets").get_by_role("link", name=TARGET).click()
            section = frame.locator(f'section[data-target="{TARGET}"]')
            expect(section.locator("tr.set")).to_have_count(4)

            def row(backup_id: str) -> Any:
                return section.locator(f'tr[data-backup-id="{backup_id}"]')

            expect(row(real.backup_id)).to_have_attribute("data-status", "verified")
            expect(row(real.backup_id).locator("td.kind")).to_contain_text(
                "e2e: before the page test"
            )
            expect(row(real.backup_id).locator("td.drill")).to_contain_text("passed")
            expect(row(real.backup_id).locator("td.age")).to_have_text(re.compile(r"^\d+ (s|min)$"))
            for status, fake in older.items():
                expect(row(fake.backup_id)).to_have_attribute("data-status", status)
            expect(row(older["verified"].backup_id).locator("td.age")).to_have_text("2 d 0 h")
            expect(row(older["failed"].backup_id).locator("td.age")).to_have_text("1 d 0 h")
            expect(row(older["verified"].backup_id).locator("td.retention")).to_contain_text("kept")
            expect(section.locator("[data-freshness]")).to_have_attribute("data-freshness", "ok")
            expect(section.locator("[data-last-drill]")).to_have_attribute(
                "data-last-drill", "passed"
            )
            section.evaluate("element => element.scrollIntoView()")
            page.screenshot(path=str(ARTIFACTS / "backups-page.png"))
            section.locator(f'tr[data-restore-for="{real.backup_id}"] summary').click()
            # A set made today records its locale and roles: the recipe restores it as it was.
            stock = section.locator(f'pre[id="stock-{real.backup_id}"]')
            expect(stock).to_contain_text(f"-v db=restored_{TARGET} -f globals.sql")
            expect(stock).not_to_contain_text("--no-owner")
            page.screenshot(path=str(ARTIFACTS / "restore-commands.png"))

            row(real.backup_id).locator("a.run-link").click()
            run_id = shown["run"]["dag_run_id"]
            page.wait_for_url(re.compile(rf"/dags/pg_backup_emergency_{TARGET}/runs/"))
            assert run_id in unquote(page.url), page.url
            expect(page.get_by_text(run_id).first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "backup-run.png"))
        except Exception:
            opened = [p for context in browser.contexts for p in context.pages]
            for i, open_page in enumerate(opened):
                open_page.screenshot(path=str(ARTIFACTS / f"failed-{i}.png"))
            raise
        finally:
            browser.close()
    assert (ARTIFACTS / "backups-page.png").stat().st_size > 10_000
