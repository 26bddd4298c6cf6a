"""Tests for pg_backup.core.records and core.errors: one XCom codec, one error base."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pg_backup.core import errors
from pg_backup.core.params import check_emergency_params, emergency_marker
from pg_backup.core.records import DumpResult, StagedFile


def staged(name: str) -> StagedFile:
    return StagedFile(name=name, bytes=3, sha256="a" * 64, seconds=0.5)


def test_records_round_trip_and_refuse_unknown_fields():
    """to_xcom gives plain JSON types; from_xcom rebuilds the same record, strictly."""
    record = DumpResult(
        dump=staged("db.dump"),
        tables=staged("tables.json"),
        snapshot_at="2026-01-01T00:00:00+00:00",
        server_version="15.19",
        server_major=15,
        pg_dump_version="pg_dump (PostgreSQL) 15.19",
        encoding="UTF8",
        relations=2,
        rows=10,
    )
    data = record.to_xcom()
    assert isinstance(data["dump"], dict) and data["dump_format"] == "custom"
    assert DumpResult.from_xcom(data) == record
    with pytest.raises(ValidationError):
        DumpResult.from_xcom({**data, "password": "x"})


def test_every_operator_error_shares_the_base_and_has_a_one_line_summary():
    """Each error class derives from PgBackupError; summary is one line."""
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, Exception) and c is not errors.PgBackupError
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, errors.PgBackupError), cls
    assert errors.ConfigError("a\n  b\n").summary == "a; b"


def test_tool_failed_names_a_signal_and_the_last_error_line():
    """A killed child says which signal; the summary carries pg_restore's error line."""
    killed = errors.ToolFailed("pg_dump", -9, "")
    assert "killed by SIGKILL" in str(killed)
    failed = errors.ToolFailed(
        "pg_restore", 1, "pg_restore: while PROCESSING\npg_restore: error: relation exists\nend"
    )
    assert failed.summary == "pg_restore exited with code 1: pg_restore: error: relation exists"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"reason": " ", "keep_days": 3}, "reason"),
        ({"reason": "x", "keep_days": 0}, "keep_days"),
        ({"reason": "x", "keep_days": 10_000_000_000}, "keep_days"),
        ({"reason": "x", "keep_days": True}, "keep_days"),
        ({"reason": "x", "keep_days": 3, "verify": "yes"}, "verify"),
    ],
)
def test_emergency_params_are_checked_at_run_time(params, field):
    """A REST conf that skipped the form is refused naming the param, as a ParamError."""
    with pytest.raises(errors.ParamError, match=f"param '{field}'"):
        check_emergency_params(params)


def test_emergency_marker_strips_the_reason():
    """The manifest gets the reason stripped and the keep_days asked for."""
    marker = emergency_marker({"reason": "  migration ", "keep_days": 14}, "admin")
    assert (marker.reason, marker.keep_days, marker.triggered_by) == ("migration", 14, "admin")
