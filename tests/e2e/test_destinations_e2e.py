"""Several destinations under the real scheduler: one down, then back and its upload cleared."""

from __future__ import annotations

import json

from pg_backup.core import layout
from tests.e2e.conftest import BLOCKED, Stack

RUN_TIMEOUT_S = 150.0


def test_a_down_destination_fails_its_task_and_the_run_until_its_upload_is_cleared(
    airflow_stack: Stack,
) -> None:
    """`gone` down: upload_gone fails after its retries, check_destinations fails the run, nas holds the verified set; unblocked and cleared, the set completes there with its record, no twin, and the run turns green."""
    stack = airflow_stack
    dag_id = "pg_backup_emergency_copies"
    run_id = stack.trigger(dag_id, "e2e: one destination down")["dag_run_id"]
    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    states = {t: ti["state"] for t, ti in tis.items()}
    assert ended["state"] == "failed", states
    assert states["upload_gone"] == "failed" and tis["upload_gone"]["try_number"] == 3, states
    assert states["check_destinations"] == "failed", states
    assert states["upload_nas"] == states["verify"] == "success", states
    nas = stack.storage_root / "copies"
    (manifest,) = [
        m for m in nas.rglob("manifest.json") if json.loads(m.read_text())["run_id"] == run_id
    ]
    set_dir = manifest.parent
    record = json.loads((set_dir / "verification.json").read_text())
    assert record["status"] == "verified" and record["held_by"] == ["nas"]
    backup_id = set_dir.name
    assert (stack.staging_root / "copies" / backup_id).exists()  # kept for the clear

    (stack.storage_root.parent / BLOCKED).unlink()  # the destination is back
    rerun = stack.clear(dag_id, run_id, ["upload_gone", "check_destinations"])
    assert {"upload_gone", "check_destinations"} <= rerun and "verify" not in rerun, rerun
    stack.wait_task_state(
        dag_id, run_id, "upload_gone", {"success", "failed"}, RUN_TIMEOUT_S, min_try=4
    )
    ended = stack.wait_run(dag_id, run_id, RUN_TIMEOUT_S)
    tis = stack.task_instances(dag_id, run_id)
    assert ended["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    assert tis["verify"]["try_number"] == 1  # verified once, before the clear
    gone = stack.storage_root.parent / BLOCKED / "gone"
    manifests = list(gone.rglob("manifest.json"))
    assert [m.parent.name for m in manifests] == [backup_id]  # the set, once: no twin
    there = manifests[0].parent
    assert {p.name for p in there.iterdir()} == set(layout.SET_OBJECTS)
    record = json.loads((there / "verification.json").read_text())
    assert record["status"] == "verified" and record["held_by"] == ["nas", "gone"]
    assert json.loads(manifests[0].read_text())["destination"] == "gone"
    assert len(list(nas.rglob("manifest.json"))) == 1
    assert not (stack.staging_root / "copies" / backup_id).exists()  # complete: staging cleared
