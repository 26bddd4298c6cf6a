"""Metrics through Airflow's Stats to a real StatsD server (a UDP socket on loopback).

Stats is initialised exactly as Airflow's task runner does at the start of every task process
(``stats.initialize`` with ``stats_utils.get_stats_factory()``), with ``[metrics] statsd_on``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pg_backup.adapters import catalog_index as index_io
from pg_backup.adapters.storage import FileStorage
from pg_backup.core import layout
from pg_backup.core.manifest import Verification
from tests.conftest import AgeKeys
from tests.integration.fake_sets import write_set

BASE = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


class StatsdSink:
    """What arrived at the socket: ``name -> (value, type)``."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lines: list[str] = []

    def wait_for(self, name: str) -> dict[str, tuple[str, str]]:
        while not any(line.startswith(f"{name}:") for line in self.lines):
            try:
                self.lines += self.sock.recv(65535).decode().splitlines()
            except TimeoutError:
                break
        return {
            line.split(":", 1)[0]: tuple(line.split(":", 1)[1].split("|")[:2])  # type: ignore[misc]
            for line in self.lines
        }


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdSink]:
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    try:
        yield StatsdSink(sock)
    finally:
        stats.initialize(factory=stats_utils.NoStatsLogger, export_legacy_names=False)
        sock.close()


def test_index_write_sends_the_catalog_gauges(statsd, tmp_path):
    """A hook's index write sends the same values metric_values computes, per target."""
    store = FileStorage(f"file://{tmp_path / 'storage'}")
    fake = write_set(store.put_bytes, "voting", BASE)
    raw = store.get_bytes(fake.prefix + layout.VERIFICATION_OBJECT)
    index_io.record_verification(store, "voting", Verification.from_bytes(raw))
    got = statsd.wait_for("airflow.pg_backup.voting.catalog_updated_timestamp_seconds")
    assert got["airflow.pg_backup.voting.newest_verified_timestamp_seconds"] == (
        str(BASE.timestamp()),
        "g",
    )
    assert got["airflow.pg_backup.voting.sets.verified"] == ("1.0", "g")
    assert got["airflow.pg_backup.voting.sets.failed"] == ("0.0", "g")
    stored = got["airflow.pg_backup.voting.stored_bytes"][0]
    manifest = store.get_bytes(fake.prefix + layout.MANIFEST_OBJECT)
    from pg_backup.core.manifest import Manifest

    m = Manifest.from_bytes(manifest)
    assert float(stored) == m.data.bytes + m.tables.bytes


def test_stage_listener_sends_each_stage_duration(statsd, tmp_path, age_keys: AgeKeys, monkeypatch):
    """The plugin's listener times a finished backup stage; other DAGs' tasks send nothing."""
    from pg_backup import budgets

    config = tmp_path / "pg_backup.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": {
                    "scratch_conn_id": "s",
                    "storage": {"url": f"file://{tmp_path}"},
                    "encryption": {"recipients": [age_keys.public]},
                },
                "targets": {"voting": {"source_conn_id": "src"}},
            }
        )
    )
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(config))
    budgets._config.cache_clear()
    ended = datetime.now(UTC)
    # The listener's input is Airflow's task instance; only these fields are read.
    ti: Any = SimpleNamespace(
        dag_id="pg_backup_voting", task_id="dump", start_date=ended - timedelta(seconds=42)
    )
    other: Any = SimpleNamespace(dag_id="unrelated", task_id="dump", start_date=ended)
    budgets.emit_duration(other, ended)
    budgets.emit_duration(ti, ended)
    got = statsd.wait_for("airflow.pg_backup.voting.stage.dump")
    budgets._config.cache_clear()
    value, kind = got["airflow.pg_backup.voting.stage.dump"]
    assert (float(value), kind) == (42000.0, "ms")
    assert not [name for name in got if "unrelated" in name]
