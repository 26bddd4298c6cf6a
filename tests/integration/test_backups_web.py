"""The Backups page app inside Airflow's own API app (``create_app``), in process.

Airflow mounts the plugin, its auth manager logs users in and decides who may read which DAG;
the DAGs are parsed from the dags folder into the metadata DB. Storage is file:// with sets
written by ``fake_sets`` and the index kept by the package's own code.

The one stand-in: ``PerDagAuthManager``. The simple auth manager grants by role only, so it
cannot say "alice may read the DAGs of target alpha but not of beta", which FAB or Keycloak
policies can. It is the simple auth manager with that one rule added; login, tokens and the
authorization calls the page makes are Airflow's own.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

from pg_backup.adapters import catalog_index as index_io
from pg_backup.adapters.storage import FileStorage
from pg_backup.core import catalog_index as ci
from pg_backup.core import layout
from tests.conftest import REPO, AgeKeys
from tests.integration.fake_sets import write_drill_report, write_set

TARGETS = ("alpha", "beta")
PASSWORDS = {"admin": "admin-pw-1", "alice": "alice-pw-2", "nobody": "nobody-pw-3"}
SCRAPE_TOKEN = "scrape-token-for-tests"
NOW = datetime.now(UTC).replace(microsecond=0)


class PerDagAuthManager(SimpleAuthManager):
    """The simple auth manager, plus: alice may read only the DAGs of target ``alpha``."""

    @staticmethod
    def _alice_may(user: Any, dag_id: str | None) -> bool:
        return user.get_name() != "alice" or bool(dag_id and dag_id.endswith("_alpha"))

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:  # type: ignore[no-untyped-def]
        allowed = super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
        return allowed and self._alice_may(user, details.id if details else None)

    def filter_authorized_dag_ids(self, *, dag_ids, user, method="GET", team_name=None):  # type: ignore[no-untyped-def]
        allowed = super().filter_authorized_dag_ids(
            dag_ids=dag_ids, user=user, method=method, team_name=team_name
        )
        return {d for d in allowed if self._alice_may(user, d)}


@dataclass
class Web:
    client: Any
    stores: dict[str, FileStorage]
    sets: dict[str, list[Any]]

    def token(self, user: str) -> str:
        resp = self.client.post("/auth/token", json={"username": user, "password": PASSWORDS[user]})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["access_token"])

    def get(self, path: str, user: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return self.client.get(path, headers=headers, **kwargs)


def _history(store: FileStorage, target: str) -> list[Any]:
    put = store.put_bytes
    sets = [
        write_set(put, target, NOW - timedelta(days=3)),
        write_set(put, target, NOW - timedelta(days=2), status="failed"),
        write_set(put, target, NOW - timedelta(hours=25), kind="emergency", keep_days=30),
        write_set(put, target, NOW - timedelta(hours=5), status="incomplete"),
    ]
    write_drill_report(put, target, NOW - timedelta(days=1), [sets[0]])
    index_io.rebuild(store, target)
    return sets


@pytest.fixture(scope="module")
def web(
    tmp_path_factory: pytest.TempPathFactory, airflow_db: Path, age_keys: AgeKeys
) -> Iterator[Web]:
    """Airflow's API app with the plugin, two targets in storage and their DAGs in the DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("web")
    config = root / "pg_backup.yaml"
    stores = {t: FileStorage(f"file://{root / ('storage-' + t)}") for t in TARGETS}
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "scratch_conn_id": "pgb_test_scratch",
                    "staging_dir": str(root / "staging"),
                    "encryption": {"recipients": [age_keys.public]},
                    "sla": "2h",
                },
                "targets": {
                    t: {"source_conn_id": f"pgb_web_{t}", "storage": {"url": stores[t].url}}
                    for t in TARGETS
                },
            }
        )
    )
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    env = {
        "PG_BACKUP_CONFIG": str(config),
        "AIRFLOW__CORE__AUTH_MANAGER": f"{__name__}.PerDagAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,alice:viewer,nobody:",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),  # 64 bytes, as HS512 wants
        "AIRFLOW_CONN_PG_BACKUP_METRICS": json.dumps(
            {"conn_type": "generic", "password": SCRAPE_TOKEN}
        ),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        sets = {t: _history(stores[t], t) for t in TARGETS}
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(str(REPO / "dags"), bundle_path=REPO / "dags", bundle_name="dags-folder")
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, "dags-folder", None)
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app("core")) as client:
            yield Web(client, stores, sets)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_plugin_mounts_the_app_and_adds_the_backups_nav_entry(web):
    """Airflow lists the plugin: its FastAPI app under /pg-backup and Browse > Backups."""
    plugins = web.get("/api/v2/plugins", "admin").json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "pg_backup")
    assert [a["url_prefix"] for a in ours["fastapi_apps"]] == ["/pg-backup"]
    [view] = ours["external_views"]
    assert (view["name"], view["href"], view["url_route"], view["category"]) == (
        "Backups",
        "/pg-backup/",
        "backups",
        "browse",
    )


@pytest.mark.parametrize("path", ["/pg-backup/", "/pg-backup/api/targets", "/pg-backup/metrics"])
def test_anonymous_and_forged_requests_are_refused(web, path):
    """No credential: 401; a token not signed by this Airflow: 403; the page shows no data."""
    anonymous = web.client.get(path)
    assert anonymous.status_code == 401
    forged = web.client.get(path, headers={"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.e30.x"})
    assert forged.status_code == 403
    for resp in (anonymous, forged):
        assert not any(t in resp.text for s in web.sets.values() for t in [s[0].backup_id])


def test_a_user_sees_only_targets_whose_dags_they_may_read(web):
    """admin: both targets; alice (alpha's DAGs only): alpha; nobody (no role): refused."""
    both = web.get("/pg-backup/api/targets", "admin").json()
    assert [t["target"] for t in both] == ["alpha", "beta"]
    alice = web.get("/pg-backup/api/targets", "alice").json()
    assert [t["target"] for t in alice] == ["alpha"]
    assert web.get("/pg-backup/api/targets/beta", "alice").status_code == 403
    assert web.get("/pg-backup/api/targets/alpha", "alice").status_code == 200
    assert web.get("/pg-backup/api/targets/gamma", "admin").status_code == 404
    page = web.get("/pg-backup/", "alice").text
    assert 'data-target="alpha"' in page and 'data-target="beta"' not in page
    assert web.sets["beta"][0].backup_id not in page
    assert web.get("/pg-backup/?target=beta", "alice").status_code == 403
    only = web.get("/pg-backup/?target=beta", "admin").text
    assert 'data-target="beta"' in only and 'data-target="alpha"' not in only
    nobody = web.get("/pg-backup/", "nobody")
    assert nobody.status_code == 403 and "may not read the DAGs" in nobody.text
    # The UI's session cookie is accepted like the bearer header (what the browser sends).
    web.client.cookies.set("_token", web.token("alice"))
    try:
        assert 'data-target="alpha"' in web.client.get("/pg-backup/").text
    finally:
        web.client.cookies.clear()


def test_page_shows_every_set_its_proof_drill_and_restore_commands(web):
    """Rows with status, kind, reason, sizes, drill, commands; no row count leaves the documents."""
    resp = web.get("/pg-backup/", "admin")
    assert resp.status_code == 200
    page = resp.text
    verified, failed, emergency, incomplete = web.sets["alpha"]
    for fake in (verified, failed, emergency, incomplete):
        assert f'data-backup-id="{fake.backup_id}" data-status="{fake.status}"' in page
    assert "“before the migration”" in page
    assert "drill-passed" in page and "drill run" in page
    assert f"pg-backup restore alpha {verified.backup_id} --into dbname=restored_alpha" in page
    sha = json.loads(web.stores["alpha"].get_bytes(verified.prefix + "manifest.json"))["data"][
        "sha256"
    ]
    assert f"echo &#39;{sha}  db.dump.zst.age&#39; | sha256sum -c -" in page
    assert "5513" not in page and "5,513" not in page  # verification.json's row total
    target = web.get("/pg-backup/api/targets/alpha", "admin").json()
    assert target["headline"]["newest_verified"] == emergency.backup_id
    assert target["headline"]["freshness"] == "due"  # 25 h old: past 26 h less the 2 h SLA
    rows = {s["backup_id"]: s for s in target["sets"]}
    assert rows[verified.backup_id]["drill"]["outcome"] == "passed"
    assert rows[failed.backup_id]["verification_label"] == "failed: 2 relation(s) differ"
    assert rows[verified.backup_id]["stage_seconds"] == {"restore": 1.5, "verify": 0.2}
    assert "rows_checked" not in json.dumps(target)


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_match_the_catalog_and_scraping_lists_nothing(web, monkeypatch):
    """Every value equals the index's; a scrape makes one GET per target and no listing."""
    calls: list[str] = []
    real_list, real_get = FileStorage.list, FileStorage.get_versioned

    def listing(self: FileStorage, prefix: str) -> Any:
        calls.append(f"list {prefix}")
        return real_list(self, prefix)

    def reading(self: FileStorage, key: str) -> Any:
        calls.append(f"get {key}")
        return real_get(self, key)

    monkeypatch.setattr(FileStorage, "list", listing)
    monkeypatch.setattr(FileStorage, "get_versioned", reading)
    resp = web.client.get("/pg-backup/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert sorted(calls) == [f"get {layout.catalog_key(t)}" for t in TARGETS]
    scraped = _parse(resp.text)
    now = datetime.now(UTC)
    for target in TARGETS:
        index = index_io.read_index(web.stores[target], target)
        assert index is not None
        for name, labels, value in ci.metric_values(index, now):
            key = (f"pg_backup_{name}", tuple(sorted({"target": target, **labels}.items())))
            if name.endswith("age_seconds"):
                assert abs(scraped[key] - value) < 60, key
            else:
                assert scraped[key] == value, key
        assert scraped[("pg_backup_freshness_limit_seconds", (("target", target),))] == 26 * 3600
        assert scraped[("pg_backup_catalog_present", (("target", target),))] == 1
    wrong = web.client.get("/pg-backup/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    alice = _parse(web.get("/pg-backup/metrics", "alice").text)
    assert {dict(labels)["target"] for _, labels in alice} == {"alpha"}
