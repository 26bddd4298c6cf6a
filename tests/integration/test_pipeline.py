"""The daily pipeline end to end under dag.test(), on real PostgreSQL and storage."""

from __future__ import annotations

import json

from pg_backup import layout
from pg_backup.manifest import Manifest, Verification
from tests.integration.conftest import objects, task_states, xcoms


def test_full_pipeline_file_storage(harness_factory):
    """A scheduled run on a tricky schema uploads a complete, verified set to file:// storage."""
    h = harness_factory("file")
    run = h.run()
    states = task_states(run)
    assert states == {t: "success" for t in states}, states
    store = h.storage()
    found = objects(store)
    assert len(found) == 4, found
    manifest_key = next(k for k in found if k.endswith(layout.MANIFEST_OBJECT))
    manifest = Manifest.from_bytes(store.get_bytes(manifest_key))
    verification = Verification.from_bytes(
        store.get_bytes(manifest_key.replace(layout.MANIFEST_OBJECT, layout.VERIFICATION_OBJECT))
    )
    assert verification.status == "verified"
    assert verification.mismatches == 0
    assert manifest.kind == "scheduled"
    print(json.dumps(xcoms(run), indent=1, default=str))
