"""Tests for pg_backup.core.layout: backup ids, key prefixes and scratch names derive from the run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pg_backup.core.layout import (
    backup_id,
    parse_backup_id,
    run_info,
    scratch_db_name,
    set_prefix,
)

RUN = datetime(2025, 3, 9, 2, 0, 0, tzinfo=UTC)


def test_backup_id_is_a_function_of_the_run_time() -> None:
    """The same target, time and kind always give the same id (retries rewrite, never twin)."""
    first = backup_id("voting", RUN, "scheduled")
    assert first == "voting_20250309T020000Z_scheduled"
    assert backup_id("voting", datetime(2025, 3, 9, 2, tzinfo=UTC), "scheduled") == first
    assert backup_id("voting", RUN, "emergency") == "voting_20250309T020000Z_emergency"
    assert backup_id("voting", RUN + timedelta(seconds=1), "scheduled") != first


def test_backup_id_rejects_naive_datetime() -> None:
    """A naive datetime is ambiguous and refused."""
    with pytest.raises(ValueError, match="timezone-aware"):
        backup_id("voting", datetime(2025, 3, 9, 2, 0, 0), "scheduled")


def test_backup_id_converts_to_utc() -> None:
    """A non-UTC time names the same instant in UTC."""
    berlin = datetime(2025, 3, 9, 3, 0, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 02:00 UTC
    assert backup_id("voting", berlin, "scheduled") == "voting_20250309T020000Z_scheduled"
    plus_ten = datetime(2025, 3, 10, 0, 30, tzinfo=timezone(timedelta(hours=10)))
    assert backup_id("voting", plus_ten, "scheduled") == "voting_20250309T143000Z_scheduled"


@pytest.mark.parametrize("target", ["voting", "my_db_2", "a", "x" * 24])
@pytest.mark.parametrize("kind", ["scheduled", "emergency"])
def test_parse_backup_id_round_trip(target: str, kind: Any) -> None:
    """parse_backup_id inverts backup_id, underscores and digits in target names included."""
    value = backup_id(target, RUN, kind)
    assert parse_backup_id(value) == (target, RUN, kind)
    assert parse_backup_id(value)[1].tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "voting_20250309T020000Z_daily",
        "Voting_20250309T020000Z_scheduled",
        "voting_20250309T020000_scheduled",
        "voting_2025-03-09T02:00:00Z_scheduled",
        "voting_20250309T020000Z_scheduled/",
        "voting_20250309T020000Z_scheduled_x",
        "_20250309T020000Z_scheduled",
        "../voting_20250309T020000Z_scheduled",
        "",
    ],
)
def test_parse_backup_id_rejects(value: str) -> None:
    """Anything not of the form <target>_<YYYYMMDDTHHMMSSZ>_<kind> is refused with that form."""
    with pytest.raises(ValueError, match="is not a backup id"):
        parse_backup_id(value)


def test_set_prefix_layout() -> None:
    """A set lives at <target>/YYYY/MM/DD/<id>/ (date of the run, in UTC)."""
    late = datetime(2024, 12, 31, 23, 30, tzinfo=ZoneInfo("America/New_York"))  # Jan 1 UTC
    ident = backup_id("voting", late, "emergency")
    assert set_prefix("voting", ident) == f"voting/2025/01/01/{ident}/"
    assert set_prefix("voting", "voting_20250309T020000Z_scheduled") == (
        "voting/2025/03/09/voting_20250309T020000Z_scheduled/"
    )


def test_set_prefix_rejects_bad_id() -> None:
    """A prefix is never built from something that is not a backup id."""
    with pytest.raises(ValueError, match="is not a backup id"):
        set_prefix("voting", "latest")


def test_scratch_db_name_fits_postgres_limit_for_longest_target() -> None:
    """The longest allowed target (24 chars) with the emergency kind stays within 63 bytes."""
    longest = "t" * 24
    ident = backup_id(longest, datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), "emergency")
    name = scratch_db_name(ident)
    assert name == f"pgb_verify_{ident.lower()}"
    assert len(name.encode()) <= 63
    assert name == name.lower()


def test_scratch_db_name_refuses_overlong() -> None:
    """A name PostgreSQL would silently truncate is refused instead."""
    with pytest.raises(ValueError, match="longer than 63 bytes"):
        scratch_db_name(backup_id("t" * 40, RUN, "emergency"))


@dataclass
class FakeDagRun:
    run_after: datetime | None
    logical_date: datetime | None
    dag_id: str = "pg_backup_voting"
    run_id: str = "scheduled__2025-03-09T02:00:00+00:00"


def test_run_info_uses_run_after(tmp_path: Path) -> None:
    """The backup id comes from dag_run.run_after, not logical_date and not now()."""
    dag_run = FakeDagRun(
        run_after=datetime(2025, 3, 9, 2, 0, 5, tzinfo=UTC),
        logical_date=datetime(2025, 3, 8, 2, 0, 0, tzinfo=UTC),
    )
    info = run_info("voting", "scheduled", str(tmp_path), {"dag_run": dag_run})
    assert info.backup_id == "voting_20250309T020005Z_scheduled"
    assert info.taken_at == "2025-03-09T02:00:05+00:00"
    assert info.dag_id == "pg_backup_voting"
    assert info.run_id == dag_run.run_id
    assert info.kind == "scheduled"
    assert info.staging_path == tmp_path / "voting" / info.backup_id
    assert info.prefix == f"voting/2025/03/09/{info.backup_id}/"
    assert info.to_xcom()["backup_id"] == info.backup_id
    # Same run, asked again later (a retry): same id.
    again = run_info("voting", "scheduled", str(tmp_path), {"dag_run": dag_run})
    assert again == info


def test_run_info_manual_run_without_logical_date(tmp_path: Path) -> None:
    """A manual run (logical_date None) still gets its id from run_after; naive means UTC."""
    dag_run = FakeDagRun(
        run_after=datetime(2025, 3, 9, 14, 7, 1),
        logical_date=None,
        dag_id="pg_backup_emergency_voting",
        run_id="manual__2025-03-09T14:07:01",
    )
    info = run_info("voting", "emergency", str(tmp_path), {"dag_run": dag_run})
    assert info.backup_id == "voting_20250309T140701Z_emergency"
    assert info.taken_at == "2025-03-09T14:07:01+00:00"


def test_run_info_converts_run_after_to_utc(tmp_path: Path) -> None:
    """A run_after in another zone gives a UTC id and timestamp."""
    dag_run = FakeDagRun(
        run_after=datetime(2025, 7, 1, 4, 0, tzinfo=ZoneInfo("Europe/Berlin")),
        logical_date=None,
    )
    info = run_info("voting", "scheduled", str(tmp_path), {"dag_run": dag_run})
    assert info.backup_id == "voting_20250701T020000Z_scheduled"
    assert info.taken_at == "2025-07-01T02:00:00+00:00"
