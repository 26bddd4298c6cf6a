"""Several destinations (3-2-1): two S3 servers on two ports plus a file:// directory.

Each destination is its own upload task; one store down fails only its task (after its
retries, with its own mail) and the run names it; the others hold a proven set. Once the
store is back, the cleared upload completes the set there, verification record included,
with no twin. The cleared task is driven with its run's own records (its XComs), as in
``test_upload_rerun``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pg_backup.adapters.storage import open_storage
from pg_backup.core import layout
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.core.records import DumpResult, EncryptResult, PreflightResult
from pg_backup.stages.destinations import upload_to
from pg_backup.stages.runtime import Runtime
from tests.conftest import PG_HOST, PG_PORT, PG_USER, S3Server, free_port, psql
from tests.integration.conftest import Harness, objects, task_states, xcoms
from tests.integration.test_cli import cli_in_process
from tests.integration.test_failures import SMALL_SCHEMA, flip_byte
from tests.integration.test_pipeline import asset_events
from tests.integration.test_upload_rerun import run_of

NAMES = ["nas", "cloud", "offsite"]


@pytest.fixture(scope="module")
def second_s3() -> Iterator[S3Server]:
    """A second moto S3 server on its own port (the off-site store)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3 = S3Server(port=port, server=server, endpoint=f"http://127.0.0.1:{port}")
    s3.start()
    os.environ["AIRFLOW_CONN_PGB_TEST_AWS2"] = s3.conn_json()
    yield s3
    server.stop()


def three_destinations(h: Harness, second: S3Server, tmp_path: Any) -> Any:
    """nas (file://), cloud (the first S3 server), offsite (the second): the target's config."""
    assert h.s3 is not None
    return h.write_config(
        destinations=[
            {"name": "nas", "url": f"file://{tmp_path / ('nas-' + h.name)}"},
            {
                "name": "cloud",
                "url": f"s3://{h.s3.new_bucket()}/backups",
                "aws_conn_id": "pgb_test_aws",
            },
            {
                "name": "offsite",
                "url": f"s3://{second.new_bucket()}/backups",
                "aws_conn_id": "pgb_test_aws2",
                "retention": {"daily": 2},
            },
        ]
    )


def the_set(cfg: Any, name: str) -> tuple[str, Manifest, Verification | None]:
    """The one set in a destination: its prefix, manifest and verification record (if any)."""
    store = open_storage(cfg.destination(name))
    manifests = [k for k in objects(store) if k.endswith(layout.MANIFEST_OBJECT)]
    assert len(manifests) == 1, (name, manifests)  # one set: never a twin
    prefix = manifests[0][: -len(layout.MANIFEST_OBJECT)]
    manifest = Manifest.from_bytes(store.get_bytes(manifests[0]))
    key = prefix + layout.VERIFICATION_OBJECT
    record = Verification.from_bytes(store.get_bytes(key)) if store.exists(key) else None
    return prefix, manifest, record


def test_every_destination_holds_the_proven_set(harness_factory, second_s3, tmp_path):
    """One upload task per destination; each holds the same set, its manifest and the one verification record naming all three."""
    h = harness_factory("s3", schema=SMALL_SCHEMA)
    cfg = three_destinations(h, second_s3, tmp_path)
    run = h.run()
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    assert {f"upload_{n}" for n in NAMES} <= set(states) and "upload" not in states
    hashes = set()
    for name in NAMES:
        _, manifest, record = the_set(cfg, name)
        assert manifest.destination == name and manifest.destinations == NAMES
        assert record is not None and record.status == "verified"
        assert record.held_by == NAMES
        hashes.add(manifest.data.sha256)
    assert len(hashes) == 1  # the same bytes everywhere
    (event,) = asset_events(run)
    assert event["destinations"] == NAMES and event["verification"] == "verified"
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]


def test_one_store_down_fails_only_its_task_and_a_clear_completes_it(
    harness_factory, second_s3, tmp_path, smtp_sink
):
    """Off-site down: its task fails after retries with its own mail, the run names it, the others hold a verified set; back up, the cleared upload completes it there with its record and no twin."""
    h = harness_factory("s3", schema=SMALL_SCHEMA)
    cfg = three_destinations(h, second_s3, tmp_path)
    smtp_sink.clear()
    second_s3.stop()
    try:
        run = h.run()
    finally:
        second_s3.start()
    states = task_states(run)
    assert states["upload_offsite"] == "failed", states
    assert states["check_destinations"] == "failed", states
    assert states["upload_nas"] == states["upload_cloud"] == states["verify"] == "success"
    assert str(run.state) == "failed"
    subjects = [str(m["Subject"]) for m in smtp_sink.messages]
    assert len([s for s in subjects if ".upload_offsite " in s + " "]) == 1, subjects
    assert not [s for s in subjects if "upload_nas" in s or "upload_cloud" in s], subjects
    # check_destinations fails the run without a second mail: the upload's names the store.
    assert not [s for s in subjects if "check_destinations" in s], subjects
    (upload_mail,) = [
        m for m in smtp_sink.messages if ".upload_offsite " in str(m["Subject"]) + " "
    ]
    assert "offsite" in smtp_sink.text(upload_mail)
    for name in ("nas", "cloud"):
        _, manifest, record = the_set(cfg, name)
        assert record is not None and record.status == "verified"
        assert record.held_by == ["nas", "cloud"]
    assert not objects(open_storage(cfg.destination("offsite")))
    assert [p for p in h.staging_dir.rglob("*") if p.is_file()]  # kept for the clear

    # The store is back: the cleared upload task runs with its run's records.
    values = xcoms(run)
    rt = Runtime(cfg, run_of(h, manifest))

    def clear_upload() -> Any:
        return upload_to(
            rt,
            "offsite",
            DumpResult.from_xcom(values["dump"]),
            EncryptResult.from_xcom(values["encrypt"]),
            source=PreflightResult.from_xcom(values["preflight"]).source,
            verified=Verification.model_validate(values["mark_verified"]),
        )

    result = clear_upload()
    assert result.destination == "offsite"
    prefix, stored, record = the_set(cfg, "offsite")
    assert stored.backup_id == manifest.backup_id and stored.destination == "offsite"
    assert record is not None and record.status == "verified"
    assert record.held_by == NAMES
    before = objects(open_storage(cfg.destination("offsite")))
    clear_upload()  # cleared again: nothing new, nothing twice
    assert objects(open_storage(cfg.destination("offsite"))) == before


def test_restore_falls_back_past_a_corrupt_destination(
    harness_factory, second_s3, tmp_path, capsys, age_keys
):
    """`list` names the holders; a corrupt object in the first destination makes `restore` fall back to the next and say so; `--from` pins one."""
    h = harness_factory("s3", schema=SMALL_SCHEMA)
    cfg = three_destinations(h, second_s3, tmp_path)
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    _, manifest, _ = the_set(cfg, "nas")
    backup = manifest.backup_id
    env = {
        "AIRFLOW_CONN_PG_BACKUP_AGE_IDENTITY": json.dumps(
            {"conn_type": "generic", "password": age_keys.secret}
        )
    }

    listed = cli_in_process(h, capsys, "list", h.name, env=env)
    assert listed.returncode == 0, listed.stderr
    (line,) = [ln for ln in listed.stdout.splitlines() if ln.startswith(backup)]
    assert line.endswith("nas, cloud, offsite"), listed.stdout

    flip_byte(Path(cfg.destination("nas").url[len("file://") :]) / manifest.data.key)
    into = f"pgbt_from_{h.name}"
    try:
        done = cli_in_process(
            h,
            capsys,
            "restore",
            h.name,
            backup,
            "--into",
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={into}",
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        fallback = [ln for ln in done.stdout.splitlines() if ln.startswith("fallback")]
        assert len(fallback) == 1 and "destination nas" in fallback[0], done.stdout
        assert "does not match its manifest" in fallback[0] and "trying cloud" in fallback[0]
        assert "from      destination cloud" in done.stdout
    finally:
        psql(f'DROP DATABASE IF EXISTS "{into}" WITH (FORCE)')

    pinned = cli_in_process(h, capsys, "verify", h.name, backup, "--from", "nas", env=env)
    assert pinned.returncode == 2 and "does not match its manifest" in pinned.stderr
    assert "fallback" not in pinned.stdout
    other = cli_in_process(h, capsys, "verify", h.name, backup, "--from", "offsite", env=env)
    assert other.returncode == 0 and "intact in destination offsite" in other.stdout, other
    unknown = cli_in_process(h, capsys, "verify", h.name, backup, "--from", "tape", env=env)
    assert unknown.returncode == 2 and "use one of nas, cloud, offsite" in unknown.stderr


def _drill(h: Harness, conf: dict[str, Any] | None = None) -> Any:
    from pg_backup.dags.drill import build_drill_dag

    cfg = h.write_config()
    h._clock += timedelta(hours=1)
    return build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock, run_conf=conf)


def _drill_report(cfg: Any, name: str, h: Harness) -> list[dict[str, Any]]:
    store = open_storage(cfg.destination(name))
    return [json.loads(store.get_bytes(o.key)) for o in store.list(f"{h.name}/drills/")]


def test_drill_per_destination_names_the_one_it_used(
    harness_factory, second_s3, tmp_path, age_keys, smtp_sink
):
    """The drill restores from the destination asked (or the next in turn) and says which; on a corrupt copy it fails naming that destination; `all` hash-checks every copy."""
    h = harness_factory("s3", schema=SMALL_SCHEMA)
    os.environ["AIRFLOW_CONN_PGB_TEST_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": age_keys.secret}
    )
    three_destinations(h, second_s3, tmp_path)
    cfg = h.write_config(encryption={"identity_conn_id": "pgb_test_identity"})
    assert set(task_states(h.run()).values()) == {"success"}
    _, manifest, _ = the_set(cfg, "nas")

    smtp_sink.clear()
    run = _drill(h, {"destination": "offsite"})
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    (report,) = _drill_report(cfg, "offsite", h)
    assert report["destination"] == "offsite" and report["outcome"] == "passed"
    assert any(" from offsite " in str(m["Subject"]) for m in smtp_sink.messages)

    flip_byte(Path(cfg.destination("nas").url[len("file://") :]) / manifest.data.key)
    run = _drill(h, {"destination": "nas"})
    assert task_states(run)["fetch"] == "failed"
    (report,) = _drill_report(cfg, "nas", h)
    assert report["destination"] == "nas" and report["outcome"] != "passed"
    assert "destination nas" in json.dumps(report), report

    # all: restored from cloud, every other copy hash-checked; the corrupt one is named.
    h.write_config(drill={"destinations": "all"})
    run = _drill(h, {"destination": "cloud"})
    assert task_states(run)["fetch"] == "failed"
    (report,) = _drill_report(cfg, "cloud", h)
    assert report["destination"] == "cloud" and report["checked_in"] == ["nas", "offsite"]
    assert "destination nas" in json.dumps(report) and "does not match" in json.dumps(report)


def test_sweep_and_freshness_per_destination(harness_factory, tmp_path, smtp_sink):
    """Two directories with their own policies: each keeps exactly its own plan; the stale one alone fails its freshness check and its mail names it."""
    from pg_backup.core.retention import plan_retention
    from pg_backup.stages.sweep import policy_of
    from tests.integration.fake_sets import daily_history
    from tests.integration.test_sweep import AS_OF, day, mail_subjects, ours, run_sweep, set_keys

    h = harness_factory("file", schema="")
    rails = {"min_verified": 1, "max_delete_fraction": 1.0, "freshness": "26h"}
    h.write_config(
        destinations=[
            {
                "name": "nas",
                "url": f"file://{tmp_path / 'sw-nas'}",
                "retention": {"daily": 3, "weekly": 0, "monthly": 0, **rails},
            },
            {
                "name": "offsite",
                "url": f"file://{tmp_path / 'sw-off'}",
                "retention": {"daily": 5, "weekly": 2, "monthly": 0, **rails},
            },
        ]
    )
    cfg = ours(h).write_config()
    stores = {n: open_storage(cfg.destination(n)) for n in ("nas", "offsite")}
    history = {
        "nas": daily_history(stores["nas"].put_bytes, h.name, day(3, 15, 2), 20),
        "offsite": daily_history(stores["offsite"].put_bytes, h.name, day(3, 12, 2), 20),
    }
    smtp_sink.clear()
    run = run_sweep(h)
    states = task_states(run)
    assert states["offsite.check_freshness"] == "failed", states
    assert states["nas.check_freshness"] == "success", states
    assert all(s == "success" for t, s in states.items() if not t.endswith("check_freshness"))
    assert mail_subjects(smtp_sink) == [
        f"[pg-backup] no verified backup of {h.name} in destination offsite since 2026-03-12 02:00 UTC"
    ]
    for name, sets in history.items():
        expected = plan_retention(
            [s.backup_set() for s in sets], policy_of(cfg.for_destination(name)), AS_OF
        )
        kept = {d.backup.backup_id for d in expected.decisions if d.keep}
        left = {k.split("/")[-2] for k in set_keys(stores[name], h.name)}
        assert left == kept, name
    assert len({k.split("/")[-2] for k in set_keys(stores["nas"], h.name)}) == 3


def test_preflight_names_a_destination_down_and_fails_only_when_all_are(harness_factory, tmp_path):
    """The first destination down does not stop the run at preflight (its upload fails alone); none writable does, naming each."""
    from pg_backup.core.errors import PreflightError
    from pg_backup.stages.preflight import Preflight

    h = harness_factory("file", schema="")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory should be\n")
    cfg = h.write_config(
        destinations=[
            {"name": "down", "url": f"file://{blocked}/down"},
            {"name": "nas", "url": f"file://{tmp_path / 'pf-nas'}"},
        ]
    )
    detail = Preflight(Runtime(cfg)).storage()
    assert detail.startswith("writable: nas; NOT writable: down (cannot write to"), detail
    cfg = h.write_config(
        destinations=[
            {"name": "down", "url": f"file://{blocked}/down"},
            {"name": "also", "url": f"file://{blocked}/also"},
        ]
    )
    with pytest.raises(PreflightError, match=r"no destination is writable: down \(.*; also \("):
        Preflight(Runtime(cfg)).storage()
