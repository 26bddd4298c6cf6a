"""Secrets put where they do not belong are never echoed: not in the UI's import error, not by
``pg-backup check`` or any CLI error, not in task logs, failure mails or drill reports.

Each test puts a secret where an operator plausibly would (a URI as a connection id, a key in
storage.url, a private key as identity_conn_id, a URI pasted into a connection's host field)
and searches every message, log and mail that real components produce for it.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from tests.conftest import REPO
from tests.integration.conftest import task_states
from tests.integration.fake_sets import write_set
from tests.integration.test_cli import cli, cli_in_process

PASSWORD = "Sw0rdfish@:/%#?&=" + os.urandom(4).hex()
AWS_ID = "AKIA" + os.urandom(8).hex().upper()
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiC" + os.urandom(6).hex()[:11].upper()


def everything_said(capfd: Any, caplog: Any, *more: str) -> str:
    out, err = capfd.readouterr()
    return "\n".join([out, err, caplog.text, *more])


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:4]}... leaked"
        assert quote(secret, safe="") not in text, f"{secret[:4]}... leaked url-encoded"


def test_secrets_in_the_config_reach_neither_the_import_error_nor_check(
    harness_factory, age_keys, tmp_path
):
    """URIs as connection ids, a key in storage.url, a private key as identity: one import error naming each field, no secret in it or in `pg-backup check`."""
    from airflow.dag_processing.dagbag import DagBag

    h = harness_factory("file", schema="")
    doc = h.config_doc()
    target = doc["targets"][h.name]
    target["source_conn_id"] = f"postgresql://admin:{quote(PASSWORD, safe='')}@db.example.org/x"
    target["alerts"]["smtp_conn_id"] = f"smtp://mailer:{PASSWORD}@smtp.example.org:465"
    target["storage"] = {"url": f"s3://{AWS_ID}:{AWS_SECRET}@pg-backups/backups"}
    target["encryption"]["identity_conn_id"] = age_keys.secret
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml.safe_dump(doc))
    os.environ["PG_BACKUP_CONFIG"] = str(path)
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    finally:
        h.write_config()  # back to the harness's valid file
    ((where, message),) = bag.import_errors.items()
    assert where.endswith("backup_dags.py")
    for field in (
        "source_conn_id",
        "alerts.smtp_conn_id",
        "storage.url",
        "encryption.identity_conn_id",
    ):
        assert f"targets.{h.name}.{field}: holds" in message, message
    assert "Airflow connection" in message
    assert_no_secret(message, PASSWORD, AWS_ID, AWS_SECRET, age_keys.secret)

    checked = cli(h, "--config", str(path), "check")
    assert checked.returncode == 1
    assert checked.stdout.startswith("FAIL config:"), checked.stdout
    assert_no_secret(checked.stdout + checked.stderr, PASSWORD, AWS_ID, AWS_SECRET, age_keys.secret)


def test_a_uri_pasted_into_a_connection_field_reaches_no_log_and_no_mail(
    harness_factory, smtp_sink, capfd, caplog, airflow_home
):
    """A source connection whose host holds postgresql://user:password@...: preflight fails, and neither its logs nor the failure mail hold the password."""
    h = harness_factory("file", schema="")
    os.environ[f"AIRFLOW_CONN_PGB_SRC_{h.name.upper()}"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": f"postgresql://admin:{PASSWORD}@nowhere.invalid:5432/voting",
            "schema": "voting",
            "login": "admin",
        }
    )
    smtp_sink.clear()
    capfd.readouterr()
    caplog.clear()

    run = h.run()

    assert task_states(run)["preflight"] == "failed"
    said = everything_said(capfd, caplog)
    assert "postgresql://***@nowhere.invalid" in said  # the message is there, redacted
    (mail,) = smtp_sink.messages
    text = str(mail["Subject"]) + smtp_sink.text(mail)
    assert "cannot connect to PostgreSQL" in text
    files = "\n".join(
        p.read_text(errors="replace") for p in Path(airflow_home).rglob("*.log") if p.is_file()
    )
    assert_no_secret(said + text + files, PASSWORD)


def test_a_drill_step_failing_on_a_secret_keeps_it_out_of_report_mail_and_log(
    harness_factory, capfd, caplog
):
    """The drill's scratch connection holds a URI with a password in its host: the stored report and the mail give the cause in one line, without it."""
    from pg_backup.dags.drill import build_drill_dag

    h = harness_factory("file")
    os.environ["AIRFLOW_CONN_PGB_LEAKY_IDENTITY"] = json.dumps(
        {"conn_type": "generic", "password": h.age.secret}
    )
    h.write_config(encryption={"identity_conn_id": "pgb_leaky_identity"})
    assert set(task_states(h.run()).values()) == {"success"}
    scratch_id = f"pgb_leaky_scratch_{h.name}"
    os.environ[f"AIRFLOW_CONN_{scratch_id.upper()}"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": f"postgres://u:{PASSWORD}@nowhere.invalid/x",
            "schema": "postgres",
        }
    )
    cfg = h.write_config(scratch_conn_id=scratch_id)
    h.mail.clear()
    capfd.readouterr()
    caplog.clear()
    h._clock += timedelta(hours=1)

    run = build_drill_dag(cfg).test(run_after=h._clock, logical_date=h._clock)

    states = task_states(run)
    assert states["create_drill_dbs"] == "failed" and states["report"] == "failed", states
    store = h.storage()
    (key,) = [o.key for o in store.list(f"{h.name}/drills/")]
    doc = json.loads(store.get_bytes(key))
    (error,) = [b["error"] for b in doc["backups"]]
    assert error.startswith("create_drill_dbs failed: cannot connect to PostgreSQL"), error
    assert "postgres://***@nowhere.invalid" in error and "\n" not in error
    (mail,) = [m for m in h.mail.messages if "restore drill" in str(m["Subject"])]
    text = str(mail["Subject"]) + h.mail.text(mail)
    assert "create_drill_dbs failed" in text
    assert_no_secret(json.dumps(doc) + text + everything_said(capfd, caplog), PASSWORD)


def test_cli_errors_never_echo_a_password_given_on_the_command_line(harness_factory, capsys):
    """restore --into a URI with a password to a server that does not answer: one line, exit 2, no password."""
    h = harness_factory("file", schema="")
    fake = write_set(h.storage().put_bytes, h.name, h._clock, kind="scheduled")
    into = f"postgresql://admin:{quote(PASSWORD, safe='')}@nowhere.invalid:5432/restored"
    done = cli_in_process(h, capsys, "restore", h.name, fake.backup_id, "--into", into)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot connect to PostgreSQL" in done.stderr
    assert_no_secret(done.stdout + done.stderr, PASSWORD)
