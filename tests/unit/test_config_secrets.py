"""Secrets pasted into the config are refused without being echoed; every number has a range."""

from __future__ import annotations

import copy
import random
import string
from typing import Any

import pytest

from pg_backup.core.config import ConfigError, parse_config
from tests.unit.test_config import PATH, minimal

PASSWORD = "S3cr@t:/%#?&=pw"
AWS_ID = "AKIA" + "".join(random.choices(string.ascii_uppercase + string.digits, k=16))
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def private_key() -> str:
    from pyrage import x25519

    return str(x25519.Identity.generate())


@pytest.fixture(scope="module")
def recipient() -> str:
    from pyrage import x25519

    return str(x25519.Identity.generate().to_public())


def with_field(recipient: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(minimal(recipient))
    doc = raw["targets"]["voting"]
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value
    return raw


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, PATH)
    return str(info.value)


CONN_ID_SECRETS = [
    pytest.param(
        ("source_conn_id",), f"postgresql://admin:{PASSWORD}@db.example.org/voting", id="src-uri"
    ),
    pytest.param(("scratch_conn_id",), f"postgres://u:{PASSWORD}@scratch/postgres", id="scratch"),
    pytest.param(
        ("alerts", "smtp_conn_id"), f"smtp://mailer:{PASSWORD}@smtp.example.org:465", id="smtp"
    ),
    pytest.param(("storage", "aws_conn_id"), AWS_SECRET, id="aws-secret"),
    pytest.param(("storage", "sweep_aws_conn_id"), AWS_ID, id="aws-key-id"),
]


@pytest.mark.parametrize(("path", "value"), CONN_ID_SECRETS)
def test_conn_id_field_holding_a_secret_is_refused_unechoed_with_where_it_belongs(
    recipient: str, path: tuple[str, ...], value: str
) -> None:
    """A URI, password or key in a *_conn_id field: refused, not shown, told to use a connection."""
    message = refused(with_field(recipient, path, value))
    assert f"targets.voting.{'.'.join(path)}" in message, message
    assert "(not shown)" in message and "Airflow connection" in message, message
    for part in (PASSWORD, AWS_SECRET, AWS_ID, "admin", "mailer"):
        assert part not in message, message


def test_private_key_as_identity_conn_id_is_refused_unechoed(
    recipient: str, private_key: str
) -> None:
    """identity_conn_id: AGE-SECRET-KEY-1... fits the id pattern, and is refused all the same."""
    message = refused(with_field(recipient, ("encryption", "identity_conn_id"), private_key))
    assert "targets.voting.encryption.identity_conn_id" in message
    assert "an age private key (not shown)" in message
    assert private_key not in message and private_key[16:40] not in message


def test_storage_url_with_credentials_is_refused_unechoed(recipient: str) -> None:
    """s3://<key id>:<secret>@bucket/... is refused; the message names where the key goes."""
    url = f"s3://{AWS_ID}:{AWS_SECRET}@pg-backups/backups"
    message = refused(with_field(recipient, ("storage", "url"), url))
    assert "targets.voting.storage.url: holds credentials (not shown)" in message, message
    assert "storage.aws_conn_id" in message
    assert AWS_ID not in message and AWS_SECRET not in message


def test_ordinary_ids_and_urls_still_parse(recipient: str) -> None:
    """Connection ids with dots and dashes, and plain URLs, are what they were."""
    raw = with_field(recipient, ("source_conn_id",), "voting-db.prod_1")
    raw["targets"]["voting"]["storage"] = {"url": "s3://pg-backups/backups/2026"}
    cfg = parse_config(raw, PATH).target("voting")
    assert cfg.source_conn_id == "voting-db.prod_1"
    assert cfg.storage.url == "s3://pg-backups/backups/2026"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("timeouts", "dump"), "0s", id="zero"),
        pytest.param(("retry_delay",), -5, id="negative-number"),
        pytest.param(("sla",), "99999999999d", id="timedelta-overflow"),
        pytest.param(("drill", "rto"), float("inf"), id="infinite"),
        pytest.param(("retention", "freshness"), float("nan"), id="nan"),
        pytest.param(("dump", "lock_wait_timeout"), "3651d", id="over-ten-years"),
    ],
)
def test_durations_outside_their_range_are_config_errors(
    recipient: str, path: tuple[str, ...], value: Any
) -> None:
    """Zero, negative, infinite or overflowing durations fail as a ConfigError naming the field."""
    message = refused(with_field(recipient, path, value))
    assert f"targets.voting.{'.'.join(path)}" in message, message
    assert "more than 0 and at most 3650d" in message, message


def test_retired_recipients_are_checked_like_recipients(recipient: str, private_key: str) -> None:
    """encryption.retired_recipients holds public keys only; own_keys lists both kinds."""
    message = refused(with_field(recipient, ("encryption", "retired_recipients"), [private_key]))
    assert "encryption.retired_recipients[0]: this is a private key" in message
    assert private_key not in message
    from pyrage import x25519

    old = str(x25519.Identity.generate().to_public())
    raw = with_field(recipient, ("encryption", "retired_recipients"), [old])
    cfg = parse_config(raw, PATH).target("voting")
    assert cfg.encryption.own_keys == [recipient, old]
