"""The retention sweep DAG under dag.test(), on moto S3 over HTTP and on file:// directories.

Histories are written straight into storage as realistic sets (tests/integration/fake_sets.py);
the expected outcome is computed independently with the pure planner on the sets the test
wrote, and compared with what is left in storage after the real sweep ran.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pg_backup.adapters.storage import S3Storage
from pg_backup.core import layout
from pg_backup.core.manifest import Manifest
from pg_backup.core.retention import Plan, plan_retention
from pg_backup.stages.sweep import policy_of
from tests.integration.conftest import Harness, task_states, xcoms
from tests.integration.fake_sets import RECIPIENT, FakeSet, daily_history, write_set

AS_OF = datetime(2026, 3, 15, 4, 30, tzinfo=UTC)  # the sweep's default 30 4 * * *
TASKS = ["inventory", "plan", "delete", "housekeeping", "check_freshness", "report"]
TINY_SCHEMA = """
CREATE TABLE public."Vote" (id int PRIMARY KEY, choice text);
INSERT INTO public."Vote" SELECT i, 'c' || (i % 5) FROM generate_series(1, 200) i;
"""


# --- helpers ------------------------------------------------------------------------------


def day(month: int, dom: int, hour: int = 2) -> datetime:
    """A 2026 UTC time."""
    return datetime(2026, month, dom, hour, 0, tzinfo=UTC)


def ours(h: Harness) -> Harness:
    """The fake sets' public key is one of the harness target's keys: its sets are its own."""
    h.write_config(encryption={"recipients": [h.age.public, RECIPIENT]})
    return h


def run_sweep(h: Harness, when: datetime = AS_OF, **conf: Any) -> Any:
    """Build pg_retention_sweep_<target> from the harness's config and run it once."""
    from pg_backup.dags.sweep import build_sweep_dag

    dag = build_sweep_dag(ours(h).write_config())
    params = {"dry_run": False, "force": False, **conf}
    return dag.test(run_after=when, logical_date=when, run_conf=params)


def set_keys(store: Any, target: str) -> set[str]:
    """Keys of backup sets under the target (reports and the preflight marker left out)."""
    return {
        o.key
        for o in store.list(f"{target}/")
        if not o.key.startswith(tuple(f"{target}/{name}" for name in layout.NOT_SETS))
    }


def expected_plan(h: Harness, sets: list[FakeSet], as_of: datetime, force: bool) -> Plan:
    """The planner run by the test itself on the sets it wrote, with the configured policy.

    Incomplete sets (no manifest) cannot be proven anyone's: the sweep never plans them.
    """
    cfg = ours(h).write_config()
    policy = policy_of(cfg)
    proven = [s for s in sets if s.status != "incomplete"]
    return plan_retention([s.backup_set() for s in proven], policy, as_of, force=force)


def unproven(sets: list[FakeSet]) -> set[str]:
    """Ids of the sets without a manifest: left alone and reported by every sweep."""
    return {s.backup_id for s in sets if s.status == "incomplete"}


def keys_of(sets: list[FakeSet], ids: set[str]) -> set[str]:
    """Every key written for the sets with these ids."""
    return {k for s in sets if s.backup_id in ids for k in s.keys}


def logged(capfd: Any, caplog: Any) -> str:
    """Everything the runs logged (task logs go to stdout or the logging capture)."""
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    caplog.clear()
    return text


def half_sets(store: Any, target: str) -> list[str]:
    """Set prefixes holding a manifest but no data object: the trace of an unfinished delete."""
    keys = set_keys(store, target)
    prefixes = {
        k[: -len(layout.MANIFEST_OBJECT)] for k in keys if k.endswith(layout.MANIFEST_OBJECT)
    }
    return sorted(p for p in prefixes if p + layout.DATA_OBJECT not in keys)


def try_numbers(dag_run: Any) -> dict[str, int]:
    """task_id -> try number of a finished DagRun."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in dag_run.get_task_instances(session=session)}


def mail_subjects(sink: Any) -> list[str]:
    return [str(m["Subject"]) for m in sink.messages]


def mixed_history(store: Any, target: str) -> list[FakeSet]:
    """40 days of verified scheduled sets ending on AS_OF's day, plus broken and emergency ones."""
    put = store.put_bytes
    sets = daily_history(put, target, day(3, 15), 40)  # 2026-02-04 .. 2026-03-15, 02:00
    sets += [
        write_set(put, target, day(3, 14, 3), status="failed"),  # within grace: kept
        write_set(put, target, day(3, 5, 3), status="failed"),  # past grace: deleted
        write_set(put, target, day(3, 13, 3), status="incomplete"),  # no manifest: left alone
        write_set(put, target, day(2, 20, 3), status="incomplete"),  # no manifest: left alone
        write_set(put, target, day(2, 25, 10), kind="emergency", keep_days=30),  # kept
        write_set(put, target, day(3, 3, 10), kind="emergency", keep_days=5),  # expired
        write_set(put, target, day(3, 14, 12), kind="emergency", status="unverified", keep_days=30),
        write_set(put, target, AS_OF + timedelta(minutes=30)),  # newer than the run: kept
    ]
    return sets


# --- 1. a real sweep on S3: refused by the rail, then forced ----------------------------


def test_s3_sweep_refuses_big_plan_then_forced_deletes_exactly_the_plan(
    harness_factory, capfd, caplog
):
    """On S3 a plan over max_delete_fraction is refused (nothing deleted); force deletes exactly what the planner drops."""
    h = harness_factory("s3", schema="")
    store = h.storage()
    sets = mixed_history(store, h.name)
    before = set_keys(store, h.name)
    assert before == keys_of(sets, {s.backup_id for s in sets})
    expected = expected_plan(h, sets, AS_OF, force=True)
    doomed = {b.backup_id for b in expected.delete}
    assert len(doomed) / len(sets) > 0.5  # the history really trips the default 0.5 rail
    statuses = {s.status for s in sets if s.backup_id in doomed}
    assert {"verified", "failed"} <= statuses
    assert any(s.kind == "emergency" for s in sets if s.backup_id in doomed)

    logged(capfd, caplog)
    refused = run_sweep(h)
    states = task_states(refused)
    log = logged(capfd, caplog)
    assert states["plan"] == "failed", states
    assert states["delete"] == "upstream_failed" and states["report"] == "upstream_failed", states
    assert "plan refused, nothing deleted" in log
    assert "max_delete_fraction" in log and "force=true" in log
    assert "Retention plan as of 2026-03-15 04:30:00 UTC" in log and "REFUSED" in log
    assert set_keys(store, h.name) == before

    forced = run_sweep(h, force=True)
    states = task_states(forced)
    log = logged(capfd, caplog)
    assert set(states.values()) == {"success"}, states
    kept = {b.backup_id for b in expected.keep}
    assert set_keys(store, h.name) == keys_of(sets, kept | unproven(sets))

    values = xcoms(forced)
    found = {s["backup_id"]: s["status"] for s in values["inventory"]["sets"]}
    assert found == {s.backup_id: s.status for s in sets}
    # Sets without a manifest are reported as not proven ours, never planned or deleted.
    left_alone = {f["backup_id"] for f in values["plan"]["foreign_sets"]}
    assert left_alone == unproven(sets)
    planned = values["plan"]
    assert planned["forced"] is True and planned["refused"] is None
    assert {s["backup_id"]: s["rules"] for s in planned["sets"]} == {
        d.backup.backup_id: list(d.rules) for d in expected.decisions
    }
    deleted = values["delete"]
    assert sorted(deleted["deleted_sets"]) == sorted(doomed)
    assert deleted["deleted_objects"] == len(keys_of(sets, doomed))
    assert deleted["locked"] == [] and deleted["dry_run"] is False
    # the plan's table is in the plan task's log
    assert (
        f"Retention plan as of 2026-03-15 04:30:00 UTC (calendar UTC): "
        f"{len(sets) - len(unproven(sets))} sets, keep {len(kept)}, delete {len(doomed)} [force]"
    ) in log
    newest = layout.backup_id(h.name, day(3, 15), "scheduled")
    assert any(newest in line and "newest verified" in line for line in log.splitlines())

    # the report is stored beside the drill reports and says what was done
    key = values["report"]
    assert key.startswith(f"{h.name}/sweeps/2026-03-15-") and key.endswith(".json"), key
    assert [o.key for o in store.list(f"{h.name}/sweeps/")] == [key]
    report = json.loads(store.get_bytes(key))
    assert report["run_id"] == forced.run_id
    assert sorted(report["delete"]["deleted_sets"]) == sorted(doomed)
    assert {s["backup_id"] for s in report["plan"]["sets"] if not s["keep"]} == doomed


# --- 2. an interrupted sweep is finished by the next one --------------------------------


class DropsNetworkAfter(S3Storage):
    """Fault injection of the network, not of the code under test: after ``n`` successful
    DELETEs the S3 server itself is stopped, so the next request fails the way a lost
    endpoint does (connection refused), with the sweep's own code doing everything else."""

    def __init__(self, base: S3Storage, server: Any, n: int):
        super().__init__(base.url, base.cfg, base.aws_conn_id)
        self.server, self.n, self.calls = server, n, 0

    def delete(self, key: str) -> None:
        super().delete(key)
        self.calls += 1
        if self.calls == self.n:
            self.server.stop()


@pytest.mark.parametrize(
    "deletes_before_outage",
    [
        pytest.param(6, id="old-set-half-deleted"),
        pytest.param(2, id="recent-duplicate-half-deleted"),
    ],
)
def test_interrupted_sweep_is_finished_by_next_run(
    harness_factory, s3_server, deletes_before_outage
):
    """A sweep whose S3 endpoint vanishes mid-delete leaves half sets that the next sweep removes completely."""
    from pg_backup.adapters.catalog import inventory
    from pg_backup.stages.sweep import delete_sets, policy_of, utcnow

    h = harness_factory("s3", schema="")
    store = h.storage()
    put = store.put_bytes
    sets = daily_history(put, h.name, day(3, 15), 20)  # 2026-02-24 .. 2026-03-15
    # a second (manual) scheduled run yesterday afternoon: yesterday's 02:00 set is now surplus
    sets.append(write_set(put, h.name, day(3, 14, 14)))
    expected = expected_plan(h, sets, AS_OF, force=True)
    order = [d.backup.backup_id for d in expected.decisions if not d.keep]  # newest first
    yesterday = layout.backup_id(h.name, day(3, 14), "scheduled")
    assert order[0] == yesterday  # 4 objects: deleted first, within the 3-day grace period
    interrupted = order[0] if deletes_before_outage < 4 else order[1]

    cfg = ours(h).write_config()
    found = inventory(store, h.name, cfg.encryption.own_keys)
    plan = plan_retention(
        [s.to_backup_set() for s in found.ours()], policy_of(cfg), AS_OF, force=True
    )
    assert [b.backup_id for b in plan.delete] == order
    flaky = DropsNetworkAfter(store, s3_server, deletes_before_outage)
    try:
        result = delete_sets(flaky, found, order, dry_run=False, now=utcnow())
    finally:
        s3_server.start()
    # The set being deleted when the endpoint vanished is reported, and so is every set after
    # it (tried until the store had failed 3 times in a row, then not tried at all).
    assert [r.split(" ", 1)[0] for r in result.refused] == order[order.index(interrupted) :]
    assert any("not tried" in r for r in result.refused) == (
        len(order) - order.index(interrupted) > 3
    )
    interrupted_prefix = layout.set_prefix(h.name, interrupted)
    assert half_sets(store, h.name) == [interrupted_prefix]  # the fault hit mid-set

    run = run_sweep(h, force=True)
    states = task_states(run)
    assert set(states.values()) == {"success"}, states
    remaining = set_keys(store, h.name)
    for backup in order:
        prefix = layout.set_prefix(h.name, backup)
        assert not [k for k in remaining if k.startswith(prefix)], f"{backup} not finished"
    assert half_sets(store, h.name) == []
    assert not [k for k in remaining if k.startswith(interrupted_prefix)]
    assert remaining == keys_of(sets, {b.backup_id for b in expected.keep})


# --- 3. Object Lock ---------------------------------------------------------------------


def test_object_locked_set_is_kept_and_reported(harness_factory, s3_server):
    """A planned set under S3 Object Lock (GOVERNANCE, future date) is kept and listed as locked."""
    h = harness_factory("s3", schema="")
    bucket = s3_server.new_bucket(object_lock=True)
    h.write_config(storage={"url": f"s3://{bucket}/backups"})
    store = h.storage()
    client = s3_server.client()
    until = datetime.now(UTC) + timedelta(days=2)

    def put_locked(key: str, data: bytes) -> None:
        client.put_object(
            Bucket=bucket,
            Key=f"backups/{key}",
            Body=data,
            ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=until,
        )

    sets = daily_history(store.put_bytes, h.name, day(3, 15), 24)  # 2026-02-20 .. 03-15
    locked = write_set(put_locked, h.name, day(2, 1))
    unlocked = write_set(store.put_bytes, h.name, day(2, 2))
    sets += [locked, unlocked]
    expected = expected_plan(h, sets, AS_OF, force=True)
    doomed = {b.backup_id for b in expected.delete}
    assert {locked.backup_id, unlocked.backup_id} <= doomed
    assert store.locked_until(locked.keys[0]) is not None

    run = run_sweep(h, force=True)
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    deleted = xcoms(run)["delete"]
    assert len(deleted["locked"]) == 1, deleted
    assert deleted["locked"][0].startswith(f"{locked.backup_id} (Object Lock until "), deleted
    assert sorted(deleted["deleted_sets"]) == sorted(doomed - {locked.backup_id})
    remaining = set_keys(store, h.name)
    assert set(locked.keys) <= remaining
    assert not set(unlocked.keys) & remaining
    assert remaining == keys_of(sets, {b.backup_id for b in expected.keep} | {locked.backup_id})
    report = json.loads(store.get_bytes(xcoms(run)["report"]))
    assert report["delete"]["locked"] == deleted["locked"]


# --- 4. a wrong prefix --------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["foreign-files", "data-objects-only"])
def test_listing_without_any_manifest_refuses_and_deletes_nothing(
    harness_factory, capfd, caplog, shape
):
    """Objects under the target but no manifest at all: plan fails naming a wrong prefix, even with force; nothing deleted."""
    h = harness_factory("s3", schema="")
    store = h.storage()
    if shape == "foreign-files":
        for name in ("export/users.csv", "notes.txt", "2026/03/01/photo.jpg"):
            store.put_bytes(f"{h.name}/{name}", b"not a backup\n")
    else:
        for when in (day(1, 3), day(1, 20), day(2, 8)):  # old enough for grace to be over
            write_set(store.put_bytes, h.name, when, status="incomplete")
    before = set_keys(store, h.name)
    assert before

    logged(capfd, caplog)
    run = run_sweep(h, force=True)
    states = task_states(run)
    log = logged(capfd, caplog)
    assert states["inventory"] == "success" and states["plan"] == "failed", states
    assert states["delete"] == "upstream_failed", states
    assert "no manifest" in log and "wrong" in log and "Nothing was deleted" in log
    assert set_keys(store, h.name) == before


# --- 5. dry run ---------------------------------------------------------------------------


def test_dry_run_deletes_nothing_but_reports_what_would_go(harness_factory, capfd, caplog):
    """dry_run=true keeps every object; the stored report and the log name the sets that would go."""
    h = harness_factory("s3", schema="")
    store = h.storage()
    sets = daily_history(store.put_bytes, h.name, day(3, 15), 10)  # 03-06 .. 03-15
    sets.append(write_set(store.put_bytes, h.name, day(3, 1, 3), status="failed"))
    sets.append(write_set(store.put_bytes, h.name, day(3, 2, 3), status="incomplete"))
    expected = expected_plan(h, sets, AS_OF, force=False)
    assert expected.refused is None
    would_go = {b.backup_id for b in expected.delete}
    assert len(would_go) == 3
    before = set_keys(store, h.name)

    logged(capfd, caplog)
    run = run_sweep(h, dry_run=True)
    log = logged(capfd, caplog)
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    assert set_keys(store, h.name) == before
    values = xcoms(run)
    assert values["delete"] == {
        "deleted_sets": [],
        "deleted_objects": 0,
        "locked": [],
        "dry_run": True,
        "refused": [],
        "gone": [],
        "held": [],
    }
    report = json.loads(store.get_bytes(values["report"]))
    assert report["delete"]["dry_run"] is True
    assert {s["backup_id"] for s in report["plan"]["sets"] if not s["keep"]} == would_go
    assert report["plan"]["counts"]["delete"] == len(would_go)
    for backup in would_go:
        assert f"would delete {backup}" in log


# --- 6. freshness -------------------------------------------------------------------------


def test_freshness_alert_mails_once_and_only_when_stale(harness_factory, smtp_sink):
    """Newest verified set 3 days old with freshness 26h: check_freshness fails and exactly one freshness mail arrives; a fresh set passes silently."""
    h = harness_factory("file", schema="")
    h.write_config(retention={"freshness": "26h"})
    store = h.storage()
    daily_history(store.put_bytes, h.name, day(3, 12), 5)  # newest: 2026-03-12 02:00
    write_set(store.put_bytes, h.name, day(3, 14, 3), status="failed")  # newer, not verified

    smtp_sink.clear()
    run = run_sweep(h)
    states = task_states(run)
    assert states["check_freshness"] == "failed", states
    assert try_numbers(run)["check_freshness"] == 3  # failed for good only after 2 retries
    assert all(states[t] == "success" for t in TASKS if t != "check_freshness"), states
    subjects = mail_subjects(smtp_sink)
    assert subjects == [f"[pg-backup] no verified backup of {h.name} since 2026-03-12 02:00 UTC"], (
        subjects
    )
    assert smtp_sink.messages[0]["X-Envelope-To"] == "dba@test.invalid"
    assert not [s for s in subjects if "FAILED" in s]  # no generic failure mail on top

    write_set(store.put_bytes, h.name, AS_OF - timedelta(hours=2))
    smtp_sink.clear()
    run = run_sweep(h, AS_OF + timedelta(minutes=1))
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    assert (
        layout.backup_id(h.name, AS_OF - timedelta(hours=2), "scheduled")
        in (xcoms(run)["check_freshness"])
    )
    assert mail_subjects(smtp_sink) == []


# --- 7. file:// with one real backup ---------------------------------------------------


def test_file_sweep_keeps_real_verified_set_and_prunes_empty_dirs(harness_factory):
    """On a directory, a real pipeline set is inventoried as verified and kept, planned sets go and no empty directory is left."""
    h = harness_factory("file", schema=TINY_SCHEMA)
    backup_run = h.run()
    assert set(task_states(backup_run).values()) == {"success"}, task_states(backup_run)
    store = h.storage()
    (manifest_key,) = [k for k in set_keys(store, h.name) if k.endswith(layout.MANIFEST_OBJECT)]
    real = Manifest.from_bytes(store.get_bytes(manifest_key))
    real_at = datetime.fromisoformat(real.taken_at)
    real_set = FakeSet(
        real.backup_id,
        layout.set_prefix(h.name, real.backup_id),
        real_at,
        "scheduled",
        "verified",
        None,
        sorted(k for k in set_keys(store, h.name) if real.backup_id in k),
    )
    sets = [real_set]
    sets += [write_set(store.put_bytes, h.name, real_at - timedelta(days=i)) for i in range(1, 31)]
    sets.append(
        write_set(
            store.put_bytes, h.name, real_at - timedelta(days=9, hours=5), status="incomplete"
        )
    )
    as_of = real_at + timedelta(hours=1)
    expected = expected_plan(h, sets, as_of, force=True)
    doomed = {b.backup_id for b in expected.delete}
    assert doomed and real.backup_id not in doomed

    run = run_sweep(h, as_of, force=True)
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    found = {s["backup_id"]: s["status"] for s in xcoms(run)["inventory"]["sets"]}
    assert found[real.backup_id] == "verified"
    kept = {b.backup_id for b in expected.keep} | unproven(sets)
    assert set_keys(store, h.name) == keys_of(sets, kept)
    assert sorted(xcoms(run)["delete"]["deleted_sets"]) == sorted(doomed)
    root = Path(h.storage_url[len("file://") :])
    empty = [p for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert empty == []
    for backup in doomed:
        assert not (root / layout.set_prefix(h.name, backup)).exists()
    assert (root / real_set.prefix / layout.DATA_OBJECT).is_file()


def test_staging_is_tidied_by_one_destination_sweep_only(harness_factory):
    """housekeeping removes stale staging only where asked (the first destination's group): the groups never race over it."""
    import os

    from pg_backup.core.config import load_config
    from pg_backup.stages.runtime import Runtime
    from pg_backup.stages.sweep import housekeeping

    h = harness_factory("file")
    h.write_config()
    cfg = load_config(h.config_path).target(h.name)
    stale = h.staging_dir / h.name / f"{h.name}_20200101T020000Z_scheduled"
    stale.mkdir(parents=True)
    (stale / "db.dump").write_bytes(b"x")
    old = 1_000_000_000  # 2001
    for path in (stale / "db.dump", stale):
        os.utime(path, (old, old))
    other = housekeeping(Runtime(cfg), dry_run=False, staging=False)
    assert other["staging_removed"] == [] and stale.exists()
    first = housekeeping(Runtime(cfg), dry_run=False, staging=True)
    assert first["staging_removed"] == [stale.name] and not stale.exists()
