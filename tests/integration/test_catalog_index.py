"""The catalog index in real storage (file:// and moto's S3 over HTTP): rebuilt, kept, shared.

Sets are written with ``fake_sets`` (valid manifests and verification records, as the pipeline
writes them); the index is then kept by the same hook functions the tasks call.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pg_backup.adapters import catalog_index as index_io
from pg_backup.adapters.storage import FileStorage, S3Storage
from pg_backup.core import layout
from pg_backup.core.config import StorageConfig
from pg_backup.core.manifest import Manifest, Verification
from tests.conftest import S3Server
from tests.integration.fake_sets import FakeSet, write_drill_report, write_set

TARGET = "voting"
BASE = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def make_store(kind: str, tmp_path: Path, s3: S3Server) -> Any:
    if kind == "file":
        return FileStorage(f"file://{tmp_path / 'storage'}")
    url = f"s3://{s3.new_bucket()}/backups"
    return S3Storage(url, StorageConfig(url=url, aws_conn_id="pgb_test_aws"), "pgb_test_aws")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, s3_server: S3Server) -> Any:
    return make_store(request.param, tmp_path, s3_server)


def put(store: Any):
    return lambda key, data: store.put_bytes(key, data)


def manifest_of(store: Any, fake: FakeSet) -> Manifest:
    return Manifest.from_bytes(store.get_bytes(fake.prefix + layout.MANIFEST_OBJECT))


def history(store: Any) -> list[FakeSet]:
    """Verified, failed, an unverified emergency set and an incomplete one (no manifest)."""
    return [
        write_set(put(store), TARGET, BASE),
        write_set(put(store), TARGET, BASE + timedelta(days=1), status="failed"),
        write_set(
            put(store),
            TARGET,
            BASE + timedelta(days=1, hours=5),
            kind="emergency",
            status="unverified",
            keep_days=30,
        ),
        write_set(put(store), TARGET, BASE + timedelta(days=2), status="incomplete"),
    ]


def put_reports(store: Any, sets: list[FakeSet]) -> None:
    """A drill report (first set passed) and a sweep report (dry run: everything kept)."""
    write_drill_report(put(store), TARGET, BASE + timedelta(days=2, hours=4), [sets[0]])
    as_of = BASE + timedelta(days=2, hours=5)
    store.put_bytes(
        layout.sweep_report_key(TARGET, as_of, "scheduled__y"),
        json.dumps(
            {
                "run_id": "scheduled__y",
                "plan": {
                    "as_of": as_of.isoformat(),
                    "policy": {"daily": 7, "weekly": 4, "monthly": 12},
                    "refused": None,
                    "sets": [
                        {
                            "backup_id": sets[0].backup_id,
                            "taken_at": sets[0].taken_at.isoformat(),
                            "keep": True,
                            "rules": ["daily 2026-11-01", "newest verified"],
                        }
                    ],
                },
                "delete": {"deleted_sets": [], "locked": [], "dry_run": True},
                "housekeeping": {},
            }
        ).encode(),
    )


class Counting:
    """A real store that counts the calls made through it (listing must not be one of them)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr):

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr


def test_missing_index_is_rebuilt_from_manifests_and_reports(store):
    """The first hook finds no index: it lists once and rebuilds every set, drill and fate."""
    sets = history(store)
    put_reports(store, sets)
    v = Verification.from_bytes(store.get_bytes(sets[1].prefix + layout.VERIFICATION_OBJECT))
    index_io.record_verification(store, TARGET, v)
    index = index_io.read_index(store, TARGET)
    assert index is not None
    got = {s.backup_id: (s.status, s.kind) for s in index.sets}
    assert got == {f.backup_id: (f.status, f.kind) for f in sets}
    assert [s.backup_id for s in index.sets] == [f.backup_id for f in reversed(sets)]
    first = index.get(sets[0].backup_id)
    assert first and first.drill and first.drill.outcome == "passed"
    assert first.retention and first.retention.rules == ["daily 2026-11-01", "newest verified"]
    assert index.sweep and index.sweep.dry_run
    emergency = index.get(sets[2].backup_id)
    assert emergency and emergency.reason == "before the migration" and emergency.keep_days == 30
    m = manifest_of(store, sets[0])
    assert (
        first.stored_bytes == m.data.bytes + m.tables.bytes and first.data_sha256 == m.data.sha256
    )
    assert first.destinations[0].location == store.describe(sets[0].prefix)
    # The listing of the sets does not take the index for a stray object.
    from pg_backup.adapters.catalog import inventory

    assert inventory(store, TARGET).stray == []


def test_unreadable_index_is_rebuilt(store):
    """Garbage where the index should be: the next hook replaces it with a full, valid index."""
    sets = history(store)
    store.put_bytes(layout.catalog_key(TARGET), b"{not json")
    assert index_io.read_index(store, TARGET) is None
    index_io.record_set(store, manifest_of(store, sets[0]))
    index = index_io.read_index(store, TARGET)
    assert index is not None and {s.backup_id for s in index.sets} == {f.backup_id for f in sets}


def test_fresh_index_is_updated_without_listing_and_stale_one_rebuilt(store):
    """Hooks on a fresh index never list; once stale, the next hook rebuilds (finds a stray set)."""
    sets = history(store)
    index_io.rebuild(store, TARGET)
    hidden = write_set(put(store), TARGET, BASE + timedelta(days=3))  # written without any hook
    newer = write_set(put(store), TARGET, BASE + timedelta(days=4))
    counting = Counting(store)
    index_io.record_set(counting, manifest_of(store, newer))
    assert "list" not in counting.calls, counting.calls
    index = index_io.read_index(store, TARGET)
    assert index is not None and index.get(newer.backup_id) and not index.get(hidden.backup_id)
    old = (datetime.now(UTC) - index_io.ci.REBUILD_AFTER - timedelta(hours=1)).isoformat()
    store.put_bytes(
        layout.catalog_key(TARGET), index.model_copy(update={"built_at": old}).to_bytes()
    )
    index_io.record_set(counting, manifest_of(store, newer))
    assert "list" in counting.calls
    index = index_io.read_index(store, TARGET)
    assert index is not None and index.get(hidden.backup_id)
    assert {s.backup_id for s in index.sets} == {f.backup_id for f in [*sets, hidden, newer]}


class Racing:
    """A real store on which two writers both read the same index version before writing.

    The barrier makes the lost-update race certain instead of likely: with a plain put one of
    the two entries would be gone.
    """

    def __init__(self, inner: Any, barrier: threading.Barrier):
        self.inner = inner
        self.barrier = barrier
        self.waited: set[int] = set()
        self.puts: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_versioned(self, key: str) -> Any:
        found = self.inner.get_versioned(key)
        me = threading.get_ident()
        if key.endswith(layout.CATALOG_OBJECT) and me not in self.waited:
            self.waited.add(me)
            self.barrier.wait(timeout=30)
        return found

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        done = self.inner.put_if(key, data, tag)
        self.puts.append(done)
        return done


def test_two_writers_reading_the_same_version_both_land(store):
    """Both read version 1, one conditional put is refused, its change is re-applied: 2 entries."""
    index_io.rebuild(store, TARGET)
    a = write_set(put(store), TARGET, BASE + timedelta(days=5))
    b = write_set(put(store), TARGET, BASE + timedelta(days=6))
    racing = Racing(store, threading.Barrier(2))
    threads = [
        threading.Thread(target=index_io.record_set, args=(racing, manifest_of(store, f)))
        for f in (a, b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(racing.puts) == [False, True, True], racing.puts
    index = index_io.read_index(store, TARGET)
    assert index is not None and {s.backup_id for s in index.sets} == {a.backup_id, b.backup_id}


def _write_in_child(url: str, manifests: list[bytes]) -> None:
    """A separate process recording sets, as concurrent task processes do."""
    shared = FileStorage(url)
    for raw in manifests:
        index_io.record_set(shared, Manifest.from_bytes(raw))


def test_concurrent_processes_on_file_storage_lose_no_entry(tmp_path):
    """Four processes, five sets each, one index file: all twenty sets end up in it."""
    shared = FileStorage(f"file://{tmp_path / 'storage'}")
    index_io.rebuild(shared, TARGET)
    groups: list[list[bytes]] = [[] for _ in range(4)]
    ids = set()
    for i in range(20):
        fake = write_set(put(shared), TARGET, BASE + timedelta(hours=i))
        groups[i % 4].append(shared.get_bytes(fake.prefix + layout.MANIFEST_OBJECT))
        ids.add(fake.backup_id)
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_write_in_child, args=(shared.url, g)) for g in groups]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0
    index = index_io.read_index(shared, TARGET)
    assert index is not None and {s.backup_id for s in index.sets} == ids


def test_concurrent_threads_on_s3_lose_no_entry(tmp_path, s3_server):
    """Six writers, four sets each, against S3 conditional writes: all 24 sets are listed."""
    shared = make_store("s3", tmp_path, s3_server)
    index_io.rebuild(shared, TARGET)
    fakes = [write_set(put(shared), TARGET, BASE + timedelta(hours=i)) for i in range(24)]
    manifests = [manifest_of(shared, f) for f in fakes]

    def writer(mine: list[Manifest]) -> None:
        for m in mine:
            index_io.record_set(shared, m)

    threads = [threading.Thread(target=writer, args=(manifests[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    index = index_io.read_index(shared, TARGET)
    assert index is not None and {s.backup_id for s in index.sets} == {f.backup_id for f in fakes}


class Refusing:
    """A store that fails every index write: a fault (a full disk, a revoked grant) on demand."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        from pg_backup.core.errors import StorageError

        raise StorageError(f"upload {key}: S3 error AccessDenied")


def test_a_failing_index_write_never_fails_the_task(tmp_path, s3_server, caplog):
    """The hook logs why and returns: the set is in storage, the next sweep rebuilds the index."""
    shared = make_store("file", tmp_path, s3_server)
    fake = write_set(put(shared), TARGET, BASE)
    with caplog.at_level(logging.WARNING):
        index_io.record_set(Refusing(shared), manifest_of(shared, fake))
    assert "not updated after upload" in caplog.text and "AccessDenied" in caplog.text
    assert index_io.read_index(shared, TARGET) is None


def test_sweep_report_hook_and_cli_rebuild(tmp_path, s3_server, age_keys, capsys):
    """The sweep's report task rebuilds the index with each set's fate; the CLI prints it."""
    import yaml

    from pg_backup import cli
    from pg_backup.core.config import load_config
    from pg_backup.stages.runtime import Runtime
    from pg_backup.stages.sweep import store_report

    shared = make_store("file", tmp_path, s3_server)
    sets = history(shared)
    config = tmp_path / "pg_backup.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "scratch_conn_id": "s",
                    "storage": {"url": shared.url},
                    "encryption": {"recipients": [age_keys.public]},
                },
                "targets": {TARGET: {"source_conn_id": "src"}},
            }
        )
    )
    rt = Runtime(load_config(config).target(TARGET), storage=shared)
    as_of = BASE + timedelta(days=3)
    planned = {
        "as_of": as_of.isoformat(),
        "policy": {"daily": 7, "weekly": 4, "monthly": 12},
        "refused": None,
        "sets": [
            {
                "backup_id": f.backup_id,
                "taken_at": f.taken_at.isoformat(),
                "keep": f.status != "failed",
                "rules": [] if f.status == "failed" else ["grace 3d"],
            }
            for f in sets
        ],
    }
    deleted = {"deleted_sets": [], "deleted_objects": 0, "locked": [], "dry_run": True}
    store_report(rt, "scheduled__sweep", as_of, planned, deleted, {})
    index = index_io.read_index(shared, TARGET)
    assert index is not None and index.sweep and index.sweep.run_id == "scheduled__sweep"
    fates = {s.backup_id: s.retention for s in index.sets}
    assert all(fates[f.backup_id] for f in sets)
    failed = fates[sets[1].backup_id]
    assert failed and not failed.keep and failed.dry_run

    shared.delete(layout.catalog_key(TARGET))
    assert cli.main(["--config", str(config), "catalog", TARGET]) == 1
    assert cli.main(["--config", str(config), "catalog", TARGET, "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "no catalog index" in out and f"{len(sets)} set(s); index rebuilt" in out
    assert all(f.backup_id in out for f in sets)


def test_damaged_and_foreign_sets_are_shown_held_and_never_newest(store):
    """A rebuild shows a damaged set of ours and another deployment's set as held, with why.

    Neither is the newest verified set the page, the metrics and freshness count on.
    """
    import pyrage

    from pg_backup.core import catalog_index as ci
    from tests.integration.fake_sets import RECIPIENT

    good = write_set(put(store), TARGET, BASE)
    damaged = write_set(put(store), TARGET, BASE + timedelta(days=1))
    store.put_bytes(damaged.prefix + layout.DATA_OBJECT, b"truncated")
    foreign = write_set(put(store), TARGET, BASE + timedelta(days=2))
    other_key = str(pyrage.x25519.Identity.generate().to_public())
    theirs = manifest_of(store, foreign).model_copy(update={"recipients": [other_key]})
    store.put_bytes(foreign.prefix + layout.MANIFEST_OBJECT, theirs.to_bytes())
    index = index_io.rebuild(store, TARGET, keys=[RECIPIENT])
    by_id = {s.backup_id: s for s in index.sets}
    assert not by_id[good.backup_id].held and not by_id[good.backup_id].problems
    hurt = by_id[damaged.backup_id]
    assert hurt.held and any(f"{layout.DATA_OBJECT} is 9 bytes" in p for p in hurt.problems)
    other = by_id[foreign.backup_id]  # encrypted to another deployment's key only
    assert other.held and other.foreign and "encrypted to keys" in other.foreign
    # The newest verified set a restore would use is the good one, three days old.
    assert ci.newest_verified(index).backup_id == good.backup_id  # type: ignore[union-attr]
    values = {name: v for name, labels, v in ci.metric_values(index, BASE + timedelta(days=3))}
    assert values["sets_held"] == 2.0
    assert values["newest_verified_age_seconds"] == timedelta(days=3).total_seconds()
    # When that key is the deployment's too (a retired key), the set is ours again (and newest).
    index = index_io.rebuild(store, TARGET, keys=[RECIPIENT, other_key])
    assert ci.newest_verified(index).backup_id == foreign.backup_id  # type: ignore[union-attr]
    assert sum(s.held for s in index.sets) == 1

    from pg_backup.web.view import verification_label

    assert verification_label(hurt) == f"held, damaged: {hurt.problems[0]}"
    assert verification_label(other).startswith("held, not ours: encrypted to keys")
