"""DAG wiring of a target with several destinations (3-2-1), and of one with a single storage."""

from __future__ import annotations

from typing import Any

import pytest

from pg_backup.core.config import parse_config
from pg_backup.core.names import SweepTask

KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
TARGET = {
    "source_conn_id": "voting_db",
    "scratch_conn_id": "scratch",
    "encryption": {"recipients": [KEY]},
    "alerts": {"emails": ["dba@example.org"]},
}
MULTI = {
    "destinations": [
        {"name": "nas", "url": "file:///srv/nas", "retention": {"daily": 7}},
        {"name": "offsite", "url": "s3://offsite-bucket/pg", "aws_conn_id": "aws_offsite"},
    ]
}


def cfg_of(storage: dict[str, Any]) -> Any:
    return parse_config({"targets": {"voting": {**TARGET, **storage}}}).target("voting")


@pytest.fixture(scope="module")
def multi() -> Any:
    return cfg_of(MULTI)


def test_one_upload_task_per_destination_and_a_check_that_names_the_missing(multi: Any) -> None:
    """upload_<name> per destination; mark_verified stores the proof where the set is; check_destinations waits for all."""
    from pg_backup.dags.backup import build_backup_dag

    for kind in ("scheduled", "emergency"):
        dag = build_backup_dag(multi, kind)  # type: ignore[arg-type]
        uploads = {"upload_nas", "upload_offsite"}
        assert uploads <= set(dag.task_ids) and "upload" not in dag.task_ids
        for task_id in uploads:
            task = dag.get_task(task_id)
            assert task.execution_timeout == multi.timeouts.upload
            assert task.downstream_task_ids == {"mark_verified", "check_destinations"}
        # The proof does not wait for any destination; its record waits for them all.
        assert dag.get_task("create_scratch_db").upstream_task_ids == {"preflight"}
        mark = dag.get_task("mark_verified")
        assert mark.upstream_task_ids == {*uploads, "verify"}
        assert mark.trigger_rule == "all_done_min_one_success"
        check = dag.get_task("check_destinations")
        assert check.trigger_rule == "all_done" and check.upstream_task_ids == uploads
        assert not check.downstream_task_ids  # a leaf: its failure fails the run
        assert not uploads & dag.get_task("verify").upstream_task_ids  # reached through restore


def test_single_storage_keeps_the_old_graph() -> None:
    """storage: alone: one task upload; mark_verified waits for upload and verify; a failed upload fails the run even with verify=false."""
    from pg_backup.dags.backup import build_backup_dag

    dag = build_backup_dag(cfg_of({"storage": {"url": "file:///srv/b"}}), "emergency")
    assert "upload" in dag.task_ids
    assert dag.get_task("mark_verified").upstream_task_ids == {"upload", "verify"}
    # mark_verified is skipped with verify=false: this leaf still fails a run whose upload did.
    check = dag.get_task("check_destinations")
    assert check.upstream_task_ids == {"upload"} and check.trigger_rule == "all_done"
    assert not check.downstream_task_ids


def test_sweep_has_a_task_group_per_destination(multi: Any) -> None:
    """Each destination gets every sweep task, its own freshness mail callback included."""
    from pg_backup.dags.sweep import build_sweep_dag

    dag = build_sweep_dag(multi)
    for name in ("nas", "offsite"):
        for step in SweepTask:
            assert f"{name}.{step.value}" in dag.task_ids
    for name in ("nas", "offsite"):
        assert dag.get_task(f"{name}.check_freshness").on_failure_callback is not None


def test_drill_form_offers_the_destinations(multi: Any) -> None:
    """The drill's trigger form lets an operator pick the destination (empty: in turn)."""
    from pg_backup.dags.drill import build_drill_dag

    dag = build_drill_dag(multi)
    param = dag.params.get_param("destination")
    assert param.value is None and param.schema["enum"] == [None, "nas", "offsite"]
