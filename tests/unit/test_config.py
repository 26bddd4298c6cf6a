"""Tests for pg_backup.core.config: parsing, default merging, and error messages that name the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pg_backup.core.config import (
    CONFIG_ENV,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "dags" / "pg_backup.example.yaml"
EXAMPLE_PLACEHOLDER = "age1replacewithyourpublickeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
PATH = "/etc/pg_backup/pg_backup.yaml"
MiB = 1024**2


@pytest.fixture(scope="module")
def key_pair() -> tuple[str, str]:
    """A fresh age key pair (public, private); nothing is committed."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    return str(identity.to_public()), str(identity)


@pytest.fixture(scope="module")
def recipient(key_pair: tuple[str, str]) -> str:
    return key_pair[0]


def minimal(recipient: str) -> dict[str, Any]:
    """The smallest valid document: one target, everything else defaulted."""
    return {
        "defaults": {
            "scratch_conn_id": "pg_backup_scratch",
            "storage": {"url": "file:///srv/pg_backup"},
            "encryption": {"recipients": [recipient]},
        },
        "targets": {"voting": {"source_conn_id": "voting_db"}},
    }


def config_error(raw: dict[str, Any], path: str = PATH) -> str:
    """The ConfigError message parse_config raises for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, path)
    return str(info.value)


def problems_of(message: str) -> list[str]:
    """The indented problem lines below the 'invalid pg_backup config <file>:' header."""
    return [line.strip() for line in message.splitlines()[1:] if line.startswith("  ")]


# --- valid documents ---------------------------------------------------------------------


def test_complete_valid_config_parses(recipient: str) -> None:
    """Every documented section parses into typed values (durations, sizes, nested models)."""
    raw = {
        "defaults": {
            "scratch_conn_id": "pg_backup_scratch",
            "schedule": "15 3 * * *",
            "owner": "dba-team",
            "tags": ["voting"],
            "staging_dir": "/var/lib/pg_backup/staging",
            "staging_headroom": 1.5,
            "storage": {
                "url": "s3://university-backups/postgres/",
                "aws_conn_id": "aws_backup_writer",
                "sweep_aws_conn_id": "aws_backup_sweeper",
                "storage_class": "STANDARD_IA",
                "sse_kms_key_id": "alias/pg-backup",
                "object_lock": {"mode": "COMPLIANCE", "days": 35},
                "multipart_chunksize": "128MiB",
            },
            "dump": {
                "pg_bin_dir": "/usr/lib/postgresql/17/bin",
                "schemas": ["public"],
                "exclude_schemas": ["scratch"],
                "lock_wait_timeout": "90s",
                "jobs": 2,
            },
            "compress": {"level": 19, "threads": 4},
            "encryption": {"recipients": [recipient], "identity_conn_id": "age_identity"},
            "restore": {"jobs": 4},
            "alerts": {
                "emails": ["dba@example.org", "oncall@example.org"],
                "smtp_conn_id": "smtp_relay",
                "from_email": "pg-backup@example.org",
                "on_retry": True,
            },
            "retries": 3,
            "retry_delay": "2m",
            "max_retry_delay": "1h",
            "timeouts": {"dump": "8h", "verify": "45m"},
            "emergency": {"keep_days": 30},
        },
        "targets": {"voting": {"source_conn_id": "voting_db"}},
    }
    config = parse_config(raw, PATH)
    target = config.target("voting")
    assert config.path == PATH
    assert target.name == "voting"
    assert target.source_conn_id == "voting_db"
    assert target.scratch_conn_id == "pg_backup_scratch"
    assert target.schedule == "15 3 * * *"
    assert target.owner == "dba-team"
    assert target.storage.url == "s3://university-backups/postgres"  # trailing slash dropped
    assert target.storage.object_lock is not None
    assert target.storage.object_lock.mode == "COMPLIANCE"
    assert target.storage.object_lock.days == 35
    assert target.storage.multipart_chunksize == 128 * MiB
    assert target.dump.lock_wait_timeout == timedelta(seconds=90)
    assert target.dump.schemas == ["public"]
    assert target.compress.level == 19
    assert target.encryption.recipients == [recipient]
    assert target.alerts.emails == ["dba@example.org", "oncall@example.org"]
    assert target.retries == 3
    assert target.retry_delay == timedelta(minutes=2)
    assert target.max_retry_delay == timedelta(hours=1)
    assert target.timeouts.dump == timedelta(hours=8)
    assert target.timeouts.verify == timedelta(minutes=45)
    assert target.timeouts.restore == timedelta(hours=6)  # untouched stage keeps its default
    assert target.emergency.keep_days == 30


def test_defaults_merge_into_targets_key_by_key(recipient: str) -> None:
    """A nested section overridden in a target keeps the sibling keys it did not override."""
    raw = minimal(recipient)
    raw["defaults"]["storage"] = {
        "url": "file:///srv/pg_backup",
        "storage_class": "STANDARD_IA",
        "multipart_chunksize": "128MiB",
    }
    raw["defaults"]["compress"] = {"level": 5, "threads": 2}
    raw["defaults"]["timeouts"] = {"dump": "2h"}
    raw["targets"] = {
        "voting": {
            "source_conn_id": "voting_db",
            "storage": {"url": "s3://university-backups/voting"},
            "compress": {"level": 9},
            "timeouts": {"restore": "1h"},
        },
        "hr": {"source_conn_id": "hr_db"},
    }
    config = parse_config(raw, PATH)
    voting, hr = config.target("voting"), config.target("hr")
    assert voting.storage.url == "s3://university-backups/voting"
    assert voting.storage.storage_class == "STANDARD_IA"
    assert voting.storage.multipart_chunksize == 128 * MiB
    assert voting.compress.level == 9
    assert voting.compress.threads == 2
    assert voting.timeouts.dump == timedelta(hours=2)
    assert voting.timeouts.restore == timedelta(hours=1)
    # The other target still sees the defaults: merging did not leak one target into another.
    assert hr.storage.url == "file:///srv/pg_backup"
    assert hr.compress.level == 5
    assert hr.timeouts.restore == timedelta(hours=6)
    assert raw["defaults"]["compress"] == {"level": 5, "threads": 2}


def test_per_target_override_wins(recipient: str) -> None:
    """A scalar set in a target beats the same key under defaults."""
    raw = minimal(recipient)
    raw["defaults"].update(schedule="0 2 * * *", retries=3, owner="dba")
    raw["targets"]["voting"].update(schedule="30 1 * * *", retries=5, owner="voting-team")
    target = parse_config(raw, PATH).target("voting")
    assert (target.schedule, target.retries, target.owner) == ("30 1 * * *", 5, "voting-team")


def test_unknown_target_lookup_names_known_targets(recipient: str) -> None:
    """Config.target on a missing name says which targets exist."""
    config = parse_config(minimal(recipient), PATH)
    with pytest.raises(ConfigError, match=r"no target 'payroll' \(targets: voting\)"):
        config.target("payroll")


# --- invalid documents -------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _target(**values: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        raw["targets"]["voting"].update(values)

    return mutate


def _drop_source(raw: dict[str, Any]) -> None:
    del raw["targets"]["voting"]["source_conn_id"]


def _rename(name: str) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        raw["targets"] = {name: raw["targets"]["voting"]}

    return mutate


INVALID: list[tuple[str, Mutation, list[str]]] = [
    (
        "duration",
        _target(retry_delay="2 hours"),
        ["targets.voting.retry_delay", "'2 hours'", "write it like 90s, 30m, 2h or 1d"],
    ),
    (
        "nested-duration",
        _target(timeouts={"dump": "2 hours"}),
        ["targets.voting.timeouts.dump", "'2 hours'", "write it like 90s, 30m, 2h or 1d"],
    ),
    (
        "cron",
        _target(schedule="every day at 2"),
        ["targets.voting.schedule", "'every day at 2'", "write it like '0 2 * * *'"],
    ),
    (
        "level-0",
        _target(compress={"level": 0}),
        ["targets.voting.compress.level", "(got 0)", "greater than or equal to 1"],
    ),
    (
        "level-23",
        _target(compress={"level": 23}),
        ["targets.voting.compress.level", "(got 23)", "less than or equal to 22"],
    ),
    (
        "missing-source",
        _drop_source,
        ["targets.voting.source_conn_id", "required field is missing", "pg_backup.example.yaml"],
    ),
    (
        "http-url",
        _target(storage={"url": "http://backups.example.org/pg"}),
        ["targets.voting.storage.url", "'http://backups.example.org/pg'", "s3:// or file://"],
    ),
    (
        "relative-file-url",
        _target(storage={"url": "file://backups/pg"}),
        ["targets.voting.storage.url", "'file://backups/pg'", "absolute path", "file:///"],
    ),
    (
        "bad-bucket",
        _target(storage={"url": "s3://University_Backups/pg"}),
        # The fix: what a bucket name may be made of (fails until the bucket message says so).
        ["targets.voting.storage.url", "'University_Backups'", "3-63"],
    ),
    (
        "retries-1",
        _target(retries=1),
        ["targets.voting.retries", "(got 1)", "greater than or equal to 2"],
    ),
    (
        "uppercase-name",
        _rename("Voting"),
        ["targets.Voting", "1-24 characters of a-z, 0-9 and _"],
    ),
    (
        "long-name",
        _rename("v" * 25),
        ["targets." + "v" * 25, "1-24 characters of a-z, 0-9 and _"],
    ),
    (
        "scratch-is-source",
        _target(scratch_conn_id="voting_db"),
        ["targets.voting", "scratch_conn_id", "'voting_db'", "a connection of their own"],
    ),
    (
        "unknown-nested-key",
        _target(storage={"url": "file:///srv/pg_backup", "bukcet": "x"}),
        ["targets.voting.storage.bukcet", "unknown field", "check its spelling"],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=i) for i, m, e in INVALID],
)
def test_invalid_input_names_file_field_value_and_fix(
    recipient: str, mutate: Mutation, expected: list[str]
) -> None:
    """Each bad input is one problem naming the file, the field path, the bad value and a fix."""
    raw = minimal(recipient)
    mutate(raw)
    message = config_error(raw)
    assert PATH in message
    problems = problems_of(message)
    assert len(problems) == 1, message
    for needle in expected:
        assert needle in problems[0], f"{needle!r} not in {message!r}"


def test_password_key_gets_never_secrets_hint_without_echoing_it(recipient: str) -> None:
    """A pasted ``password:`` is rejected with the never-secrets hint and is not echoed back."""
    raw = minimal(recipient)
    raw["targets"]["voting"]["password"] = "Hunter2-voting-db"
    message = config_error(raw)
    assert PATH in message
    assert "targets.voting.password" in message
    assert "unknown field" in message
    assert "never passwords or keys" in message
    # The message becomes an import error in the UI and the dag-processor log.
    assert "Hunter2-voting-db" not in message


@pytest.mark.parametrize(
    ("as_list", "field"),
    [
        pytest.param(True, "defaults.encryption.recipients[0]", id="list-item"),
        # `recipients: AGE-SECRET-KEY-...` (the YAML dash forgotten) must not leak either.
        pytest.param(False, "defaults.encryption.recipients", id="scalar"),
    ],
)
def test_private_key_in_recipients_is_named_and_not_echoed(
    key_pair: tuple[str, str], as_list: bool, field: str
) -> None:
    """An AGE-SECRET-KEY pasted as recipient is rejected at its field and never echoed."""
    public, private = key_pair
    raw = minimal(public)
    raw["defaults"]["encryption"]["recipients"] = [private] if as_list else private
    message = config_error(raw)
    assert PATH in message
    assert field in message
    if as_list:
        assert "private key" in message
        assert "public key (age1...)" in message
    # The message becomes an import error shown in the UI and written to the logs.
    assert private not in message
    assert private[15:] not in message  # not even the key material without its prefix


def test_malformed_recipient_names_its_index(recipient: str) -> None:
    """A recipient that is not age1... names encryption.recipients[i], the value and the fix."""
    raw = minimal(recipient)
    raw["defaults"]["encryption"]["recipients"] = [recipient, "age1nope"]
    message = config_error(raw)
    problems = problems_of(message)
    assert len(problems) == 1, message
    assert "defaults.encryption.recipients[1]" in problems[0]
    assert "'age1nope'" in problems[0]
    assert "pg-backup keygen" in problems[0]

    raw["defaults"]["encryption"]["recipients"] = ["ssh-ed25519 AAAAC3Nz"]
    assert "defaults.encryption.recipients[0]" in config_error(raw)


def test_every_bad_target_is_reported(recipient: str) -> None:
    """Problems in several targets are collected into one error, not just the first."""
    raw = minimal(recipient)
    raw["targets"]["hr"] = {"source_conn_id": "hr_db", "compress": {"level": 99}}
    raw["targets"]["voting"]["schedule"] = "sometimes"
    message = config_error(raw)
    assert "targets.hr.compress.level" in message
    assert "targets.voting.schedule" in message
    assert len(problems_of(message)) == 2


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        pytest.param(["a", "list"], "must be a mapping", id="not-a-mapping"),
        pytest.param({"targets": {}}, "add at least one target", id="no-targets"),
        pytest.param(
            {"targets": {"voting": {}}, "password": "x"}, "unknown top-level key", id="top-key"
        ),
        pytest.param({"targets": {"voting": "db"}}, "targets.voting: must be a mapping", id="str"),
    ],
)
def test_malformed_document_shape(raw: Any, needle: str) -> None:
    """A document of the wrong shape fails with the file and what to write instead."""
    message = config_error(raw)
    assert PATH in message
    assert needle in message


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    """A missing file names itself, the example to copy and the environment variable."""
    missing = tmp_path / "nowhere" / "pg_backup.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "pg_backup.example.yaml" in message
    assert CONFIG_ENV in message


def test_invalid_yaml_names_path(tmp_path: Path) -> None:
    """Broken YAML is a ConfigError naming the file, not a bare yaml exception."""
    path = tmp_path / "pg_backup.yaml"
    path.write_text("targets:\n  voting: {source_conn_id: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_load_config_reads_the_env_path(
    tmp_path: Path, recipient: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an argument the file named by $PG_BACKUP_CONFIG is read, and errors name it."""
    path = tmp_path / "from-env.yaml"
    raw = minimal(recipient)
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_config().path == str(path)
    raw["targets"]["voting"]["compress"] = {"level": 0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"from-env\.yaml[\s\S]*targets\.voting\.compress\.level"):
        load_config()


# --- the shipped example -----------------------------------------------------------------


def test_example_with_placeholder_fails_only_on_the_recipient() -> None:
    """The example as shipped has exactly one problem: the placeholder at recipients[0]."""
    assert EXAMPLE_PLACEHOLDER in EXAMPLE.read_text()
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLE)
    message = str(info.value)
    assert str(EXAMPLE) in message
    problems = problems_of(message)
    assert len(problems) == 1, message
    assert "encryption.recipients[0]" in problems[0]


def test_example_with_real_recipient_validates(tmp_path: Path, recipient: str) -> None:
    """With a real public key pasted in, the example validates and defines target voting."""
    text = EXAMPLE.read_text()
    assert EXAMPLE_PLACEHOLDER in text
    path = tmp_path / "pg_backup.yaml"
    path.write_text(text.replace(EXAMPLE_PLACEHOLDER, recipient))
    config = load_config(path)
    assert list(config.targets) == ["voting"]
    voting = config.target("voting")
    assert voting.source_conn_id == "voting_db"
    assert voting.scratch_conn_id == "pg_backup_scratch"
    assert voting.encryption.recipients == [recipient]
    assert voting.schedule == "0 2 * * *"
    assert voting.storage.multipart_chunksize == 64 * MiB
    assert voting.timeouts.dump == timedelta(hours=6)
    assert voting.retries >= 2


# --- duration and size forms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        (" 2 h ", 7200),
        (45, 45),
        (2.5, 2.5),
        (timedelta(minutes=3), 180),
    ],
)
def test_parse_duration_forms(value: Any, seconds: float) -> None:
    """Every documented duration form gives the right timedelta."""
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["2 hours", "h", "", "-5m", "5w", "1h30m", True, None])
def test_parse_duration_rejects(value: Any) -> None:
    """Anything else is a ValueError that shows how to write a duration."""
    with pytest.raises(ValueError, match="write it like 90s, 30m, 2h or 1d"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("64MiB", 64 * MiB),
        ("512M", 512 * MiB),
        ("2G", 2 * 1024**3),
        ("1GiB", 1024**3),
        ("1KiB", 1024),
        ("1KB", 1024),
        ("1.5G", int(1.5 * 1024**3)),
        ("1T", 1024**4),
        ("100", 100),
        ("100B", 100),
        (" 10 mib ", 10 * MiB),
        (4096, 4096),
    ],
)
def test_parse_size_forms(value: Any, size: int) -> None:
    """Every documented size form gives bytes (binary units)."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "64 Mbps", "-1M", "M", "", True])
def test_parse_size_rejects(value: Any) -> None:
    """Anything else is a ValueError that shows how to write a size."""
    with pytest.raises(ValueError, match="write it like 64MiB, 512M or 2G"):
        parse_size(value)


def test_size_and_duration_errors_reach_config_messages(recipient: str) -> None:
    """A bad size inside the file is reported at its field with the bad value."""
    raw = minimal(recipient)
    raw["targets"]["voting"]["storage"] = {"url": "file:///x", "multipart_chunksize": "lots"}
    message = config_error(copy.deepcopy(raw))
    assert "targets.voting.storage.multipart_chunksize" in message
    assert "'lots'" in message
    assert "64MiB" in message
