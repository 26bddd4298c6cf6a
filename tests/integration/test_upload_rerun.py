"""A rerun of the upload (a retry, or the task cleared in the UI) never makes a good set worse.

The upload task is driven here with the very records its DAG run handed it (its XComs), after
the run's staging was cleaned: exactly what a cleared upload task gets. The e2e test
``tests/e2e/test_alerts.py::test_clearing_upload_of_a_green_run_keeps_its_verified_set`` does
the same through the REST API under a real scheduler.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from pg_backup.adapters.catalog import inventory
from pg_backup.core import layout
from pg_backup.core.errors import StagedFileError
from pg_backup.core.manifest import Manifest, Verification
from pg_backup.core.records import DumpResult, EncryptResult, PreflightResult
from pg_backup.stages.runtime import Runtime
from pg_backup.stages.upload import upload_set
from tests.integration.conftest import Harness, task_states, xcoms
from tests.integration.test_cli import cli_in_process
from tests.integration.test_failures import (
    SMALL_SCHEMA,
    flip_byte,
    stage_until_encrypted,
    storage_keys,
)


def stored(h: Harness) -> dict[str, str]:
    """key -> sha256 of every object of the harness's sets (reports left out)."""
    store = h.storage()
    return {
        o.key: hashlib.sha256(store.get_bytes(o.key)).hexdigest()
        for o in store.list(f"{h.name}/")
        if "/.preflight" not in o.key
    }


def run_of(h: Harness, manifest: Manifest) -> layout.RunInfo:
    """The RunInfo the DAG run derived (its backup id, time, staging directory)."""
    return layout.RunInfo(
        target=h.name,
        kind=manifest.kind,
        backup_id=manifest.backup_id,
        taken_at=manifest.taken_at,
        dag_id=manifest.dag_id,
        run_id=manifest.run_id,
        staging=str(layout.staging_run_dir(str(h.staging_dir), h.name, manifest.backup_id)),
    )


def rerun_upload(h: Harness, values: dict[str, Any], manifest: Manifest) -> Any:
    """What the cleared upload task does: upload_set with the run's own upstream records."""
    cfg = h.write_config()
    return upload_set(
        Runtime(cfg, run_of(h, manifest)),
        DumpResult.from_xcom(values["dump"]),
        EncryptResult.from_xcom(values["encrypt"]),
        source=PreflightResult.from_xcom(values["preflight"]).source,
    )


@pytest.mark.parametrize("storage", ["file", "s3"])
def test_upload_rerun_after_a_green_run_keeps_the_verified_set(harness_factory, storage, capsys):
    """Cleared after success, upload is a no-op: the set stays intact and verified; with its data object damaged and staging gone, it touches nothing and says so."""
    h = harness_factory(storage, schema=SMALL_SCHEMA)
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    assert not [p for p in h.staging_dir.rglob("*") if p.is_file()]  # staging was cleaned
    values = xcoms(run)
    store = h.storage()
    (key,) = [k for k in stored(h) if k.endswith(layout.MANIFEST_OBJECT)]
    manifest = Manifest.from_bytes(store.get_bytes(key))
    before = stored(h)

    result = rerun_upload(h, values, manifest)

    assert result.data_sha256 == manifest.data.sha256
    assert stored(h) == before  # nothing withdrawn, nothing rewritten
    prefix = layout.set_prefix(h.name, manifest.backup_id)
    assert Verification.from_bytes(store.get_bytes(prefix + layout.VERIFICATION_OBJECT)).status == (
        "verified"
    )
    (found,) = inventory(store, h.name, [h.age.public]).sets
    assert (found.status, found.sound) == ("verified", True)

    # Now the stored data object is truncated and staging is gone: the upload cannot rebuild
    # the set, so it must not take it apart. It fails saying so; the set is as it was.
    data_key = prefix + layout.DATA_OBJECT
    short = store.get_bytes(data_key)[:-100]
    store.put_bytes(data_key, short)
    damaged = stored(h)
    with pytest.raises(StagedFileError) as err:
        rerun_upload(h, values, manifest)
    assert "Nothing in storage was changed" in str(err.value), str(err.value)
    assert layout.DATA_OBJECT in str(err.value)
    assert stored(h) == damaged  # manifest and verification.json still there
    (found,) = inventory(store, h.name, [h.age.public]).sets
    assert found.problems == [
        f"stored {layout.DATA_OBJECT} is {len(short)} bytes, the manifest says "
        f"{manifest.data.bytes}"
    ]
    # ... and `pg-backup list` shows it, instead of a plain "verified".
    listed = cli_in_process(h, capsys, "list", h.name)
    assert listed.returncode == 0, listed.stderr
    (line,) = [row for row in listed.stdout.splitlines() if row.startswith(manifest.backup_id)]
    assert "the manifest says" in line and f"{len(short)} bytes" in line, line


def test_replacing_a_set_happens_only_once_the_new_staged_files_are_proven(harness_factory):
    """A rerun with new staged files withdraws the old manifest only after proving them; a changed staged file leaves the old set whole."""
    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    dumped, data, tables = stage_until_encrypted(cfg, run)
    upload_set(Runtime(cfg, run), dumped, EncryptResult(data=data, tables=tables))
    store = h.storage()
    verification = Verification(
        backup_id=run.backup_id,
        status="verified",
        checked_at=run.taken_at,
        relations_checked=2,
        rows_checked=550,
        mismatches=0,
        warnings=0,
        restore_seconds=1.0,
        verify_seconds=0.1,
    )
    store.put_bytes(run.prefix + layout.VERIFICATION_OBJECT, verification.to_bytes())
    first = stored(h)

    # The run is cleared from its dump: new staged files (age output differs every time).
    dumped2, data2, tables2 = stage_until_encrypted(cfg, run)
    assert data2.sha256 != data.sha256
    flip_byte(run.staging_path / data2.name)  # ... and one of them changed after encrypt
    with pytest.raises(StagedFileError) as err:
        upload_set(Runtime(cfg, run), dumped2, EncryptResult(data=data2, tables=tables2))
    assert str(run.staging_path / data2.name) in str(err.value)
    assert stored(h) == first  # the verified set is whole
    assert not [k for k in storage_keys(h) if k.endswith(".part")]

    flip_byte(run.staging_path / data2.name)  # back as encrypt wrote it
    upload_set(Runtime(cfg, run), dumped2, EncryptResult(data=data2, tables=tables2))
    manifest = Manifest.from_bytes(store.get_bytes(run.prefix + layout.MANIFEST_OBJECT))
    assert manifest.data.sha256 == data2.sha256
    keys = stored(h)
    assert keys[run.prefix + layout.DATA_OBJECT] == data2.sha256
    # The old verification vouched for the old bytes: withdrawn until verify runs again.
    assert run.prefix + layout.VERIFICATION_OBJECT not in keys
    assert Path(store.root / run.prefix / layout.DATA_OBJECT).stat().st_size == data2.bytes
