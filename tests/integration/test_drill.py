"""The weekly restore drill end to end: a set fetched back from storage, restored, proven."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest

from pg_backup.core import layout
from tests.conftest import psql
from tests.integration.conftest import task_states

CHECKS = [
    {
        "name": "every vote has its user and candidate",
        "sql": 'SELECT v.id FROM public."Vote" v LEFT JOIN public."User" u ON u.id = v."userId" '
        'LEFT JOIN public."Candidate" c ON c.id = v."candidateId" '
        "WHERE u.id IS NULL OR c.id IS NULL",
    },
    {
        "name": "audit log not empty",
        "sql": 'SELECT EXISTS (SELECT 1 FROM "Élection Data"."Audit Log")',
    },
]


@pytest.fixture
def identity_conn(age_keys):
    os.environ["AIRFLOW_CONN_PGB_TEST_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    yield "pgb_test_identity"
    os.environ.pop("AIRFLOW_CONN_PGB_TEST_IDENTITY", None)


def _drill(h, conf=None):
    from pg_backup.dags.drill import build_drill_dag

    cfg = h.write_config()
    h._clock += timedelta(hours=1)
    return build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock, run_conf=conf)


def _report(h, run):
    store = h.storage()
    keys = [o.key for o in store.list(f"{h.name}/drills/")]
    assert len(keys) == 1, keys
    return json.loads(store.get_bytes(keys[0]))


@pytest.mark.parametrize("storage", ["s3", "file"])
def test_drill_restores_newest_and_an_older_backup(harness_factory, identity_conn, storage):
    """Two backups in storage: the drill restores both, counts and checks pass, report mailed."""
    h = harness_factory(storage)
    h.write_config(encryption={"identity_conn_id": identity_conn}, drill={"checks": CHECKS})
    assert set(task_states(h.run()).values()) == {"success"}
    psql('INSERT INTO public."Vote" ("userId", "candidateId") VALUES (1, 1)', h.source_db)
    assert set(task_states(h.run()).values()) == {"success"}
    h.mail.clear()
    run = _drill(h)
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    doc = _report(h, run)
    assert doc["outcome"] == "passed"
    assert len(doc["backups"]) == 2
    newest, older = doc["backups"]
    assert newest["taken_at"] > older["taken_at"]
    for b in doc["backups"]:
        assert b["counts_ok"] and b["ok"]
        assert set(b["phases"]) == {"fetch", "decrypt", "decompress", "restore", "verify"}
        assert [c["ok"] for c in b["checks"]] == [True, True, True]
        assert b["checks"][-1]["name"] == "as it was: locale, settings"
    assert isinstance(doc["seed"], int)
    subjects = [m["Subject"] for m in h.mail.messages]
    assert any("restore drill passed" in s and h.name in s for s in subjects), subjects
    # teardown dropped the drill databases and the downloads
    assert psql(f"SELECT count(*) FROM pg_database WHERE datname LIKE 'pgb_drill_{h.name}%'") == "0"
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]


def _one_backup(harness_factory, identity_conn, **overrides):
    h = harness_factory("file")
    h.write_config(encryption={"identity_conn_id": identity_conn}, **overrides)
    assert set(task_states(h.run()).values()) == {"success"}
    h.mail.clear()
    return h


def test_flipped_byte_in_storage_is_caught_by_the_hash(harness_factory, identity_conn):
    """One flipped byte in the stored data object fails fetch, naming the object and both hashes."""
    h = _one_backup(harness_factory, identity_conn)
    store = h.storage()
    key = next(o.key for o in store.list(f"{h.name}/") if o.key.endswith(layout.DATA_OBJECT))
    path = store.root / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    run = _drill(h)
    states = task_states(run)
    assert states["fetch"] == "failed" and states["report"] == "failed"
    doc = _report(h, run)
    assert doc["outcome"] == "failed"
    # The report carries the cause in one line: the object and what is wrong with it.
    error = doc["backups"][0]["error"]
    assert error.startswith("fetch failed: ") and "\n" not in error, error
    assert f"{key} does not match its manifest" in error and "do not rely on it" in error
    (mail,) = [m for m in h.mail.messages if "restore drill" in m["Subject"]]
    assert f"{doc['backups'][0]['backup_id']}: fetch failed: " in str(mail["Subject"])
    assert "does not match its manifest" in h.mail.text(mail)
    from pg_backup.core.errors import DrillError
    from pg_backup.stages.retrieve import fetch as fetch_set
    from pg_backup.stages.retrieve import load_manifest

    manifest = load_manifest(store, h.name, doc["backups"][0]["backup_id"])
    with pytest.raises(DrillError) as err:
        fetch_set(store, manifest, h.staging_dir / "probe")
    assert key in str(err.value) and manifest.data.sha256 in str(err.value)
    assert not (h.staging_dir / "probe" / layout.DATA_OBJECT).exists()


def test_wrong_identity_names_the_recipients(harness_factory, identity_conn):
    """A private key that is not a recipient fails decrypt, naming the backup's recipients."""
    from pyrage import x25519

    h = _one_backup(harness_factory, identity_conn)
    os.environ["AIRFLOW_CONN_PGB_TEST_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": str(x25519.Identity.generate())}
    )
    run = _drill(h)
    assert task_states(run)["decrypt"] == "failed"
    from pg_backup.core.errors import DrillError
    from pg_backup.stages.retrieve import decrypt as decrypt_set
    from pg_backup.stages.retrieve import fetch as fetch_set
    from pg_backup.stages.retrieve import load_manifest

    store = h.storage()
    backup = _report(h, run)["backups"][0]["backup_id"]
    manifest = load_manifest(store, h.name, backup)
    dest = h.staging_dir / "probe"
    fetched = fetch_set(store, manifest, dest)
    with pytest.raises(DrillError) as err:
        decrypt_set(dest, fetched, [str(x25519.Identity.generate())], manifest)
    assert h.age.public in str(err.value)
    assert "AGE-SECRET-KEY" not in str(err.value)


def test_failing_invariant_is_named(harness_factory, identity_conn):
    """An invariant check that returns rows fails the drill and the mail names the check."""
    bad = {
        "name": "no candidate named cand 3",
        "sql": 'SELECT id FROM public."Candidate" WHERE "Name" = \'cand 3\'',
    }
    h = _one_backup(harness_factory, identity_conn, drill={"checks": [CHECKS[1], bad]})
    run = _drill(h)
    assert task_states(run)["report"] == "failed"
    doc = _report(h, run)
    checks = {c["name"]: c["ok"] for c in doc["backups"][0]["checks"]}
    assert checks == {
        "audit log not empty": True,
        "no candidate named cand 3": False,
        "as it was: locale, settings": True,
    }
    (mail,) = [m for m in h.mail.messages if "restore drill" in m["Subject"]]
    assert "FAILED" in mail["Subject"]
    assert "no candidate named cand 3" in h.mail.text(mail)


def test_rto_exceeded_fails_and_mails(harness_factory, identity_conn):
    """A restore slower than drill.rto fails the drill once and mails the measured RTO."""
    h = _one_backup(harness_factory, identity_conn, drill={"rto": "0.01s"})
    run = _drill(h)
    states = task_states(run)
    assert states["verify"] == "success" and states["report"] == "failed"
    doc = _report(h, run)
    assert doc["outcome"] == "failed" and doc["backups"][0]["ok"]
    assert doc["backups"][0]["rto_seconds"] > 0.01
    drill_mails = [m for m in h.mail.messages if "restore drill" in m["Subject"]]
    assert len(drill_mails) == 1, [m["Subject"] for m in drill_mails]
    assert "FAILED" in drill_mails[0]["Subject"]


def test_backup_id_param_drills_exactly_one(harness_factory, identity_conn):
    """A manual trigger with backup_id drills that set only."""
    h = _one_backup(harness_factory, identity_conn)
    first = [o.key for o in h.storage().list(f"{h.name}/") if o.key.endswith("manifest.json")]
    assert set(task_states(h.run()).values()) == {"success"}
    backup = first[0].split("/")[-2]
    run = _drill(h, conf={"backup_id": backup})
    assert set(task_states(run).values()) == {"success"}
    assert [b["backup_id"] for b in _report(h, run)["backups"]] == [backup]
