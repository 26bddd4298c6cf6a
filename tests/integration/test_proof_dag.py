"""The proof inside the daily DAG: what verification.json says, where fingerprints live, the mail."""

from __future__ import annotations

import html
import json
import subprocess

from pg_backup.core import layout
from pg_backup.core.manifest import Manifest, Verification
from tests.integration.conftest import RICH_SCHEMA, objects, task_states, xcoms

# A generated column over a function that claims to be immutable but is not: the restore
# recomputes it, so the restored rows really differ from the snapshot's.
LYING_FUNCTION = """
CREATE FUNCTION stamp(text) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT $1 || clock_timestamp()::text $$;
CREATE TABLE receipts (id int PRIMARY KEY, tag text,
    stamped text GENERATED ALWAYS AS (stamp(tag)) STORED);
INSERT INTO receipts (id, tag) SELECT g, 'r' || g FROM generate_series(1, 50) g;
"""


def _set(store):
    found = objects(store)
    key = next(k for k in found if k.endswith(layout.MANIFEST_OBJECT))
    prefix = key[: -len(layout.MANIFEST_OBJECT)]
    return prefix, Manifest.from_bytes(store.get_bytes(key))


def test_verified_run_records_what_was_proven_and_keeps_fingerprints_encrypted(harness_factory):
    """verification.json lists counts, content and objects; fingerprints are only in tables.json.age."""
    h = harness_factory("file", schema=RICH_SCHEMA)
    run = h.run()
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    store = h.storage()
    prefix, manifest = _set(store)
    raw = store.get_bytes(prefix + layout.VERIFICATION_OBJECT)
    record = Verification.from_bytes(raw)
    assert record.status == "verified"
    assert record.proven == ["counts", "content", "objects"]
    assert record.content_checked == record.relations_checked == 9
    assert record.objects_checked and record.objects_checked > 40
    assert record.sequences_checked == 3 and record.skipped == []
    # plaintext: no table names, no fingerprints; XCom neither
    for text in (raw.decode(), json.dumps(xcoms(run), default=str)):
        assert "Vote" not in text and "Audit Log" not in text and "fingerprint" not in text
    encrypted = h.staging_dir.parent / "tables.json.age"
    encrypted.write_bytes(store.get_bytes(manifest.tables.key))
    doc = json.loads(
        subprocess.run(
            ["age", "-d", "-i", str(h.age.identity_file), str(encrypted)],
            check=True,
            capture_output=True,
        ).stdout
    )
    vote = next(r for r in doc["relations"] if r["name"] == "Vote")
    assert vote["rows"] == 3000 and vote["fingerprint"]
    assert '"public"."Vote"."Vote_pkey"' in doc["inventory"]["index"]


def test_a_restore_that_differs_fails_verify_and_mails_the_table_of_differences(
    harness_factory, smtp_sink
):
    """Rows recomputed differently on restore: verify fails, the record says so, the mail names it."""
    h = harness_factory("file", schema=LYING_FUNCTION)
    smtp_sink.clear()
    run = h.run()
    states = task_states(run)
    assert states["restore"] == "success" and states["verify"] == "failed", states
    prefix, _ = _set(h.storage())
    record = Verification.from_bytes(h.storage().get_bytes(prefix + layout.VERIFICATION_OBJECT))
    assert record.status == "failed" and record.mismatches == 1
    assert record.content_checked == 1  # the large objects; receipts differ
    mails = [m for m in smtp_sink.messages if "verify" in str(m["Subject"])]
    assert len(mails) == 1, [m["Subject"] for m in smtp_sink.messages]
    text = html.unescape(smtp_sink.text(mails[0]))
    assert '"public"."receipts"' in text and "content differs" in text
    assert "relation" in text and "snapshot" in text and "restored" in text
