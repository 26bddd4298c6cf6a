"""The one redaction function: every secret shape out, everything else left as it was."""

from __future__ import annotations

import random
import string

import pytest
from pyrage import x25519

from pg_backup.core.errors import ConfigError, PgBackupError, ToolFailed
from pg_backup.core.redact import first_line, redact, secret_kind

# Shapes only: none of these is a real credential. Key-shaped values are made at run time, so no
# file of the project holds one (a secret scanner flags the shape).
PASSWORD = "S3cr@t:/%#?&=pw"  # every character that breaks naive URI handling
AGE_KEY = str(x25519.Identity.generate())
AWS_ID = "AKIA" + "".join(random.choices(string.ascii_uppercase + string.digits, k=16))
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

SECRET_TEXTS = [
    pytest.param(f"postgresql://admin:{PASSWORD}@db.example.org:5432/voting", PASSWORD, id="uri"),
    pytest.param(f"smtp://mailer:{PASSWORD}@smtp.example.org:465", PASSWORD, id="smtp-uri"),
    pytest.param(f"s3://{AWS_ID}:{AWS_SECRET}@bucket/backups", AWS_SECRET, id="s3-url"),
    pytest.param(f"host=db user=u password='{PASSWORD}' dbname=x", PASSWORD, id="keyword-quoted"),
    pytest.param("host=db password=plain-secret dbname=x", "plain-secret", id="keyword"),
    pytest.param("PGPASSWORD=plain-secret pg_dump", "plain-secret", id="env"),
    pytest.param("https://h/x?user=a&password=plain-secret&x=1", "plain-secret", id="query"),
    pytest.param(f'{{"conn_type": "postgres", "password": "{PASSWORD}"}}', PASSWORD, id="json"),
    pytest.param(f"identity_conn_id {AGE_KEY!r} is not defined", AGE_KEY, id="age-key"),
    pytest.param(f"key {AWS_ID} denied", AWS_ID, id="aws-key-id"),
    pytest.param(f"aws_secret_access_key {AWS_SECRET} given", AWS_SECRET, id="aws-secret"),
]


@pytest.mark.parametrize(("text", "secret"), SECRET_TEXTS)
def test_every_secret_shape_is_redacted_and_says_what_was_there(text: str, secret: str) -> None:
    """The secret is gone, a *** marks the spot, and redacting again changes nothing."""
    out = redact(text)
    assert secret not in out, out
    assert "***" in out
    assert redact(out) == out
    assert secret_kind(text) is not None


def test_uri_keeps_scheme_and_host_so_the_message_still_helps() -> None:
    """Only the user-info goes: scheme, host, port and database stay readable."""
    assert redact(f"postgresql://admin:{PASSWORD}@db.example.org:5432/voting") == (
        "postgresql://***@db.example.org:5432/voting"
    )
    assert redact(AGE_KEY) == "AGE-SECRET-KEY-1***"


INNOCENT = [
    "cannot connect to PostgreSQL root@127.0.0.1:5432/voting (connection 'voting_db')",
    "s3://pg-backups/backups/voting/2026/11/30/voting_20261130T020000Z_scheduled/manifest.json",
    "sha256 " + "ab12" * 16,  # a hex digest is lower case only
    "ChecksumSHA256 47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # 44 characters
    "file:///srv/pg_backup/storage/voting/2026/11/30",
    "http://127.0.0.1:9000 refused the connection",
    "mail dba@example.org about it; the password goes in PGPASSWORD",
    "put AGE-SECRET-KEY-1... in the identity connection's password field",
    "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",  # 40 hex characters (a sha1)
]


@pytest.mark.parametrize("text", INNOCENT)
def test_messages_without_secrets_pass_unchanged(text: str) -> None:
    """Hashes, checksums, paths, endpoints, addresses and advice are left as they are."""
    assert redact(text) == text
    assert secret_kind(text) is None


def test_errors_redact_when_made_so_every_path_gets_the_redacted_text() -> None:
    """str(), repr(), args and summary of an operator error never hold the secret."""
    exc = ConfigError(f"source_conn_id: postgresql://admin:{PASSWORD}@db/x is not an id")
    for text in (str(exc), repr(exc), exc.summary, *map(str, exc.args)):
        assert PASSWORD not in text, text
    assert isinstance(exc, PgBackupError)
    failed = ToolFailed("pg_dump", 1, f"pg_dump: error: password={PASSWORD} rejected")
    assert PASSWORD not in str(failed) and PASSWORD not in failed.summary


def test_first_line_is_one_redacted_line_of_bounded_length() -> None:
    """What a report or a mail subject carries: one line, no secret, cut to the limit."""
    text = f"\n  postgresql://a:{PASSWORD}@h/d failed\nsecond line"
    assert first_line(text) == "postgresql://***@h/d failed"
    assert len(first_line("x" * 1000, 50)) == 50
