"""Failure paths of the backup pipeline on real PostgreSQL, storage and SMTP.

After every failure nothing partial may remain that a later run or the retention sweep could
mistake for a good backup: no manifest.json for the set, no ``*.part`` file in storage or
staging, no ``pgb_verify_*`` database; and the error names the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from pg_backup.core import layout
from pg_backup.core.keys import parse_recipients
from pg_backup.core.records import EncryptResult
from pg_backup.stages.runtime import Runtime
from tests.conftest import PG_HOST, PG_PORT, PG_USER, free_port, psql
from tests.integration.conftest import Harness, task_states

SMALL_SCHEMA = """
CREATE TABLE public."Vote" (id int PRIMARY KEY, choice text);
INSERT INTO public."Vote" SELECT i, 'c' || (i % 5) FROM generate_series(1, 400) i;
CREATE TABLE public.audit (at timestamptz DEFAULT now(), entry text);
INSERT INTO public.audit (entry) SELECT 'e' || i FROM generate_series(1, 150) i;
"""

STAGES = ["dump", "compress", "encrypt", "upload", "create_scratch_db", "restore", "verify"]


# --- helpers ------------------------------------------------------------------------------


def conn_json(
    dbname: str,
    *,
    host: str = PG_HOST,
    port: int = PG_PORT,
    login: str = PG_USER,
    password: str | None = None,
) -> str:
    """An Airflow postgres connection in JSON form (the harness's pg_conn_json, with knobs)."""
    doc: dict[str, Any] = {
        "conn_type": "postgres",
        "host": host,
        "port": port,
        "login": login,
        "schema": dbname,
        "extra": {},
    }
    if password is not None:
        doc["password"] = password
    return json.dumps(doc)


def storage_keys(h: Harness) -> list[str]:
    """Every key in the harness's storage, in-flight ``.part`` files included."""
    if h.storage_url.startswith("file://"):
        root = Path(h.storage_url[len("file://") :])
        if not root.exists():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket = h.storage_url[len("s3://") :].split("/", 1)[0]
    assert h.s3 is not None
    pages = h.s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def set_keys(h: Harness) -> list[str]:
    """Keys of backup sets (the preflight's writability marker left out)."""
    return [k for k in storage_keys(h) if not k.endswith(("/.preflight", "/catalog.json"))]


def verify_dbs(h: Harness) -> list[str]:
    """Scratch databases of this harness's target still on the server."""
    out = psql(f"SELECT datname FROM pg_database WHERE datname LIKE 'pgb\\_verify\\_{h.name}\\_%'")
    return out.splitlines() if out else []


def assert_nothing_partial(h: Harness, *, manifest_allowed: bool = False) -> None:
    """Nothing left that a later run or a retention sweep could take for a good backup."""
    keys = storage_keys(h)
    assert not [k for k in keys if k.endswith(".part")], keys
    if not manifest_allowed:
        assert not [k for k in keys if k.endswith(layout.MANIFEST_OBJECT)], keys
    assert not [k for k in keys if k.endswith(layout.VERIFICATION_OBJECT)], keys
    assert not list(h.staging_dir.rglob("*.part")), list(h.staging_dir.rglob("*"))
    assert verify_dbs(h) == []


def logged(capfd: Any, caplog: Any) -> str:
    """Everything the runs logged, from the stdout capture and the logging capture both.

    Airflow sends task logs to one or the other depending on how it configured logging
    earlier in the session.
    """
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    caplog.clear()
    return text


def try_numbers(dag_run: Any) -> dict[str, int]:
    """task_id -> try number of a finished DagRun."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: ti.try_number for ti in dag_run.get_task_instances(session=session)}


def row_counts(db: str) -> dict[str, int]:
    """Exact rows per user table of a database (and nothing else in it)."""
    tables = psql(
        "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1", db
    ).splitlines()
    return {t: int(psql(f"SELECT count(*) FROM {t}", db)) for t in tables}


def stage_until_encrypted(
    cfg: Any, run: layout.RunInfo, source: Any = None
) -> tuple[Any, Any, Any]:
    """Run dump, compress and encrypt directly; return (dumped, data, tables) records.

    :param source: the source endpoint to dump (None: looked up from ``source_conn_id``)
    """
    from pg_backup.adapters.streams import compress_file, encrypt_file
    from pg_backup.stages.dump import run_dump

    dumped = run_dump(Runtime(cfg, run, **({"source": source} if source else {})))
    compressed = compress_file(
        run.staging_path / layout.DUMP_FILE, dumped.dump, run.staging_path / layout.COMPRESSED_FILE
    )
    recipients = parse_recipients(cfg.encryption.recipients)
    data = encrypt_file(
        run.staging_path / layout.COMPRESSED_FILE,
        compressed,
        run.staging_path / layout.ENCRYPTED_FILE,
        recipients,
        part_size=cfg.storage.multipart_chunksize,
    )
    tables = encrypt_file(
        run.staging_path / layout.TABLES_FILE,
        dumped.tables,
        run.staging_path / layout.ENCRYPTED_TABLES_FILE,
        recipients,
    )
    return dumped, data, tables


def flip_byte(path: Path, offset: int | None = None) -> str:
    """Change one byte in place (size unchanged); return the file's new sha256."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()


# --- 1. configuration ---------------------------------------------------------------------


def test_malformed_recipient_fails_config_load_naming_field(harness_factory):
    """A malformed age recipient fails config loading naming the field; nothing written."""
    from pg_backup.core.config import ConfigError, load_config

    h = harness_factory("file", schema="")
    with pytest.raises(ConfigError) as err:
        h.write_config(encryption={"recipients": ["age1notakey"]})
    message = str(err.value)
    assert f"targets.{h.name}.encryption.recipients[0]" in message, message
    assert "'age1notakey' is not an age X25519 public key" in message, message
    # The thin DAG file calls load_config(): the same error surfaces as the import error.
    with pytest.raises(ConfigError, match=re.escape("encryption.recipients[0]")):
        load_config()
    assert storage_keys(h) == []
    assert not h.staging_dir.exists()


# --- 2. unreachable source ----------------------------------------------------------------


def test_unreachable_source_fails_preflight_after_retries(harness_factory, capfd, caplog):
    """An unreachable source fails preflight on every try; later stages never run."""
    h = harness_factory("file", schema="")
    dead_port = free_port()  # bound then released: nothing listens there
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = conn_json("nowhere", port=dead_port)
    logged(capfd, caplog)

    run = h.run()

    states = task_states(run)
    assert states["preflight"] == "failed", states
    assert {t: states[t] for t in STAGES} == {t: "upstream_failed" for t in STAGES}, states
    assert try_numbers(run)["preflight"] == 3  # first try + retries: 2
    assert str(run.state) == "failed"
    log = logged(capfd, caplog)
    assert f"cannot connect to PostgreSQL {PG_USER}@{PG_HOST}:{dead_port}/nowhere" in log
    assert f"(connection 'pgb_src_{h.name}')" in log
    assert storage_keys(h) == []
    assert_nothing_partial(h)


# --- 3. scratch connection pointing at the source ------------------------------------------


def test_scratch_equal_to_source_fails_preflight_source_untouched(harness_factory, capfd, caplog):
    """A scratch connection naming the source database fails preflight; source untouched."""
    h = harness_factory("file", schema=SMALL_SCHEMA)
    before = row_counts(h.source_db)
    assert before == {'public."Vote"': 400, "public.audit": 150}
    scratch_id = f"pgb_scratch_{h.name}"
    os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = conn_json(h.source_db, host="localhost")
    h.write_config(scratch_conn_id=scratch_id)
    logged(capfd, caplog)

    run = h.run()

    states = task_states(run)
    assert states["preflight"] == "failed", states
    assert {t: states[t] for t in STAGES} == {t: "upstream_failed" for t in STAGES}, states
    log = logged(capfd, caplog)
    assert f"scratch_conn_id {scratch_id!r} points at the source database" in log
    assert row_counts(h.source_db) == before
    assert set_keys(h) == []
    assert_nothing_partial(h)


# --- 4. a staged file changed between stages ----------------------------------------------


def test_changed_staged_file_is_refused_by_next_stage(harness_factory):
    """Each stage refuses a changed staged input, naming the file and both hashes."""
    from pg_backup.adapters.staging import StagedFileError
    from pg_backup.adapters.streams import compress_file, encrypt_file
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.upload import upload_set

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    staging = run.staging_path

    dumped = run_dump(Runtime(cfg, run))
    dump_path = staging / layout.DUMP_FILE
    changed_sha = flip_byte(dump_path)
    with pytest.raises(StagedFileError) as err:
        compress_file(dump_path, dumped.dump, staging / layout.COMPRESSED_FILE)
    message = str(err.value)
    assert str(dump_path) in message, message
    assert f"sha256 {dumped.dump.sha256}" in message, message  # what the dump stage recorded
    assert f"sha256 {changed_sha}" in message, message  # what compress actually read
    assert not (staging / layout.COMPRESSED_FILE).exists()
    assert not list(staging.glob("*.part")), list(staging.iterdir())

    # The restore stage checks the dump the same way before pg_restore sees it.
    from pg_backup.stages.restore import restore_staged

    with pytest.raises(StagedFileError, match=re.escape(changed_sha)):
        restore_staged(Runtime(cfg, run), dumped, layout.scratch_db_name(run.backup_id))

    # Put the byte back: the chain goes on, then the compressed file is changed.
    flip_byte(dump_path)
    compressed = compress_file(dump_path, dumped.dump, staging / layout.COMPRESSED_FILE)
    changed_sha = flip_byte(staging / layout.COMPRESSED_FILE, offset=100)
    with pytest.raises(StagedFileError) as err:
        encrypt_file(
            staging / layout.COMPRESSED_FILE,
            compressed,
            staging / layout.ENCRYPTED_FILE,
            parse_recipients(cfg.encryption.recipients),
        )
    assert compressed.sha256 in str(err.value)
    assert changed_sha in str(err.value)
    assert not (staging / layout.ENCRYPTED_FILE).exists()

    # And the upload refuses a changed encrypted file: no data object, no manifest.
    flip_byte(staging / layout.COMPRESSED_FILE, offset=100)
    recipients = parse_recipients(cfg.encryption.recipients)
    data = encrypt_file(
        staging / layout.COMPRESSED_FILE, compressed, staging / layout.ENCRYPTED_FILE, recipients
    )
    tables = encrypt_file(
        staging / layout.TABLES_FILE,
        dumped.tables,
        staging / layout.ENCRYPTED_TABLES_FILE,
        recipients,
    )
    changed_sha = flip_byte(staging / layout.ENCRYPTED_FILE)
    with pytest.raises(StagedFileError, match=re.escape(changed_sha)):
        upload_set(Runtime(cfg, run), dumped, EncryptResult(data=data, tables=tables))
    assert set_keys(h) == []
    assert_nothing_partial(h)


# --- 5. pg_restore errors -----------------------------------------------------------------


def test_restore_into_conflicting_database_fails_with_pg_restore_messages(harness_factory, make_db):
    """A conflicting table makes restore_dump fail carrying pg_restore's own messages."""
    from pg_backup.adapters.pg_restore import restore_dump
    from pg_backup.adapters.pgconn import endpoint
    from pg_backup.adapters.tools import ToolFailed
    from pg_backup.stages.dump import run_dump

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    target = make_db("pgbt_conflict")
    psql('CREATE TABLE public."Vote" (id text, weight numeric, note text)', target)

    with pytest.raises(ToolFailed) as err:
        restore_dump(
            endpoint(cfg.scratch_conn_id).with_db(target),
            str(run.staging_path / dumped.dump.name),
            jobs=2,
        )
    message = str(err.value)
    assert err.value.tool == "pg_restore"
    assert err.value.returncode != 0
    assert f"restoring into {PG_USER}@{PG_HOST}:{PG_PORT}/{target}" in message, message
    assert 'relation "Vote" already exists' in message, message
    assert "errors ignored on restore" in message, message


def test_check_extensions_names_the_missing_extension(scratch_conn):
    """check_extensions against the real scratch server names an extension it does not have."""
    from pg_backup.adapters.pg_restore import check_extensions
    from pg_backup.adapters.pgconn import endpoint
    from pg_backup.core.errors import RestoreError

    server = endpoint("pgb_test_scratch")
    check_extensions(server, ["plpgsql", "citext"])  # both available: no error
    missing = f"pgb_no_such_ext_{uuid.uuid4().hex[:6]}"
    with pytest.raises(RestoreError) as err:
        check_extensions(server, ["citext", missing])
    message = str(err.value)
    named = message.split("lacks extension(s) ", 1)[1].split(" that the dump needs", 1)[0]
    assert named == missing, message  # only the missing one; citext exists there
    assert f"{PG_USER}@{PG_HOST}:{PG_PORT}/postgres" in message, message


def test_restore_task_fails_on_pg_restore_error_and_leaves_no_scratch_db(
    harness_factory, capfd, caplog
):
    """A real pg_restore error fails the restore task; no verification, no scratch DB left."""
    h = harness_factory("file", schema="CREATE EXTENSION file_fdw;" + SMALL_SCHEMA)
    role = f"pgb_createdb_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE ROLE {role} LOGIN CREATEDB NOSUPERUSER")
    try:
        scratch_id = f"pgb_scratch_{h.name}"
        os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = conn_json("postgres", login=role)
        h.write_config(scratch_conn_id=scratch_id)
        logged(capfd, caplog)

        run = h.run()

        states = task_states(run)
        before_restore = ["preflight", "dump", "compress", "encrypt", "upload", "create_scratch_db"]
        assert {t: states[t] for t in before_restore} == dict.fromkeys(before_restore, "success"), (
            states
        )
        assert states["restore"] == "failed", states
        assert states["verify"] == "upstream_failed", states
        assert states["drop_scratch_db"] == "success", states  # the teardown still ran
        assert try_numbers(run)["restore"] == 3
        log = logged(capfd, caplog)
        assert "pg_restore exited with code 1 restoring into" in log
        assert 'permission denied to create extension "file_fdw"' in log
        assert verify_dbs(h) == []
        # The upload (beside the restore) completed the set, but mark_verified wrote no
        # verification.json: it lists as "unverified", never as a good backup.
        assert states["mark_verified"] == "failed", states
        keys = set_keys(h)
        assert len([k for k in keys if k.endswith(layout.MANIFEST_OBJECT)]) == 1, keys
        assert_nothing_partial(h, manifest_allowed=True)
        # Staging is kept after a failure (for inspection), but holds only finished files.
        kept = sorted(p.name for p in h.staging_dir.rglob("*") if p.is_file())
        assert layout.DUMP_FILE in kept
        assert not [k for k in kept if k.endswith(".part")]
    finally:
        for db in verify_dbs(h):
            psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        psql(f"DROP ROLE IF EXISTS {role}")


# --- 6. S3 endpoint down ------------------------------------------------------------------


def test_upload_to_stopped_s3_endpoint_fails_without_manifest(harness_factory, s3_server):
    """With the S3 endpoint down the upload fails naming the endpoint; no manifest exists."""
    from pg_backup.adapters.storage import StorageError, open_storage
    from pg_backup.stages.upload import upload_set

    h = harness_factory("s3", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    dumped, data, tables = stage_until_encrypted(cfg, run)

    s3_server.stop()
    try:
        with pytest.raises(StorageError) as err:
            upload_set(Runtime(cfg, run), dumped, EncryptResult(data=data, tables=tables))
        assert s3_server.endpoint in str(err.value), str(err.value)
        # The data upload itself reports the unreachable store as a StorageError naming the
        # object it could not write.
        store = open_storage(cfg.storage)
        with pytest.raises(StorageError) as err:
            store.put_file(run.staging_path / data.name, run.prefix + layout.DATA_OBJECT, data)
        assert f"upload {cfg.storage.url}/{run.prefix}{layout.DATA_OBJECT}" in str(err.value)
        assert s3_server.endpoint in str(err.value)
    finally:
        s3_server.start()
    assert set_keys(h) == []
    assert_nothing_partial(h)


def test_upload_interrupted_before_manifest_leaves_no_manifest(harness_factory, s3_server):
    """An upload dying just before the manifest leaves no manifest; a rerun completes the set."""
    from pg_backup.adapters.storage import S3Storage, StorageError
    from pg_backup.stages.upload import upload_set

    h = harness_factory("s3", schema=SMALL_SCHEMA)
    cfg = h.write_config()
    run = h.run_info()
    dumped, data, tables = stage_until_encrypted(cfg, run)

    class StopsBeforeManifest(S3Storage):
        # Fault injection, not a mock: the real endpoint really goes down at the one moment
        # (between the data objects and the manifest) that cannot be hit reliably by timing.
        def put_bytes(self, key: str, payload: bytes, retain_until: Any = None) -> Any:
            if key.endswith(layout.MANIFEST_OBJECT):
                s3_server.stop()
            return super().put_bytes(key, payload, retain_until)

    store = StopsBeforeManifest(cfg.storage.url, cfg.storage, cfg.storage.aws_conn_id)
    try:
        with pytest.raises(StorageError) as err:
            upload_set(
                Runtime(cfg, run, storage=store), dumped, EncryptResult(data=data, tables=tables)
            )
    finally:
        s3_server.start()
    assert f"{run.prefix}{layout.MANIFEST_OBJECT}" in str(err.value)
    assert s3_server.endpoint in str(err.value)
    keys = set_keys(h)
    prefix = "backups/" + run.prefix
    assert keys == sorted([prefix + layout.DATA_OBJECT, prefix + layout.TABLES_OBJECT]), keys
    assert_nothing_partial(h)

    # A retried upload rewrites the same set (same keys, no twin) and completes it.
    upload_set(Runtime(cfg, run), dumped, EncryptResult(data=data, tables=tables))
    assert set_keys(h) == sorted(
        prefix + name for name in (layout.DATA_OBJECT, layout.TABLES_OBJECT, layout.MANIFEST_OBJECT)
    )


# --- 7. bad emergency parameters ----------------------------------------------------------


BAD_CONFS = [
    pytest.param({"reason": ""}, "reason", id="empty-reason"),
    pytest.param({"reason": "   "}, "reason", id="blank-reason"),
    pytest.param({}, "reason", id="missing-reason"),
    pytest.param({"reason": "before migration", "keep_days": 0}, "keep_days", id="keep-days-0"),
    pytest.param({"reason": "before migration", "keep_days": "x"}, "keep_days", id="keep-days-x"),
]


@pytest.mark.parametrize(("conf", "param"), BAD_CONFS)
def test_bad_emergency_params_rejected_naming_param(harness_factory, conf, param):
    """A bad emergency conf is refused at run creation naming the param; nothing uploaded."""
    from airflow.models.dagrun import DagRun
    from airflow.sdk.definitions.param import ParamValidationError
    from airflow.utils.session import create_session

    from pg_backup.core.params import check_emergency_params

    h = harness_factory("file", schema="")
    dag = h.dag("emergency")
    with pytest.raises(ParamValidationError, match=rf"Invalid input for param {param}\b"):
        dag.test(run_conf=conf)
    with create_session() as session:
        assert session.query(DagRun).filter(DagRun.dag_id == dag.dag_id).count() == 0
    # The preflight task re-checks the form for confs that bypass the UI's validation.
    params = {"verify": True, "keep_days": 90, **conf}
    with pytest.raises(ValueError, match=rf"param '{param}'"):
        check_emergency_params(params)
    assert storage_keys(h) == []
    assert not h.staging_dir.exists()


# --- 8. failure email ---------------------------------------------------------------------


def test_failed_run_sends_one_failure_email_after_last_retry(harness_factory, smtp_sink):
    """A failed run mails once after the last retry naming target, DAG, task and run."""
    h = harness_factory("file", schema="")
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = conn_json("nowhere", port=free_port())
    dag_id = f"pg_backup_{h.name}"

    smtp_sink.clear()
    run = h.run()
    assert task_states(run)["preflight"] == "failed"
    mails = list(smtp_sink.messages)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    mail = mails[0]
    subject = str(mail["Subject"])
    assert subject.startswith("[pg-backup] FAILED:"), subject
    assert h.name in subject
    assert f"{dag_id}.preflight" in subject
    assert run.run_id in subject
    assert mail["X-Envelope-To"] == "dba@test.invalid"
    body = (
        mail.get_payload(decode=True)
        if not mail.is_multipart()
        else b"".join(part.get_payload(decode=True) or b"" for part in mail.walk())
    )
    text = body.decode("utf-8", "replace")
    assert "try 3" in text, text  # sent after the last retry, not on the first failure
    assert "cannot connect to PostgreSQL" in text, text

    # Retry mail is opt-in: with alerts.on_retry each retry mails once more.
    h.write_config(alerts={"on_retry": True})
    smtp_sink.clear()
    run = h.run()
    subjects = sorted(str(m["Subject"]) for m in smtp_sink.messages)
    assert [s.split(":")[0] for s in subjects] == [
        "[pg-backup] FAILED",
        "[pg-backup] retrying",
        "[pg-backup] retrying",
    ], subjects
    assert_nothing_partial(h)
