"""Trigger parameters: their ranges (shared by the UI form and the run-time check) and checks.

The form validates what a person types; a REST trigger's ``conf`` reaches the run without that
validation, so every task that uses a param checks it again here.
"""

from __future__ import annotations

from typing import Any

from pg_backup.core.errors import ParamError
from pg_backup.core.manifest import Emergency

KEEP_DAYS_MIN = 1
KEEP_DAYS_MAX = 36500  # 100 years: the same bound as the config's emergency.keep_days
REASON_MAX = 500
SEED_MAX = 2**32 - 1
BACKUP_ID_MAX = 100


def check_emergency_params(params: dict[str, Any]) -> None:
    """Check the emergency DAG's ``reason``, ``verify`` and ``keep_days``; raise ParamError."""
    reason = params.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ParamError("param 'reason' is required: say why this emergency backup is taken")
    if len(reason) > REASON_MAX:
        raise ParamError(f"param 'reason' is {len(reason)} characters; keep it under {REASON_MAX}")
    keep = params.get("keep_days")
    if (
        not isinstance(keep, int)
        or isinstance(keep, bool)
        or not KEEP_DAYS_MIN <= keep <= KEEP_DAYS_MAX
    ):
        raise ParamError(
            f"param 'keep_days' must be a whole number of days from {KEEP_DAYS_MIN} to "
            f"{KEEP_DAYS_MAX}, got {keep!r}"
        )
    if not isinstance(params.get("verify", True), bool):
        raise ParamError("param 'verify' must be true or false")


def emergency_marker(params: dict[str, Any], triggered_by: str | None) -> Emergency:
    """The manifest's record of why and for how long an emergency set is kept."""
    check_emergency_params(params)
    return Emergency(
        reason=params["reason"].strip(),
        keep_days=params["keep_days"],
        triggered_by=triggered_by,
    )


def flag(params: dict[str, Any], name: str) -> bool:
    """A boolean trigger param (false when absent); refuse "false" and other non-booleans.

    ``bool("false")`` is True: a REST trigger's ``conf`` must not turn on ``force`` that way.
    """
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise ParamError(f"param {name!r} must be true or false (JSON boolean), got {value!r}")
    return value


def drill_choice(params: dict[str, Any]) -> tuple[int | None, str | None]:
    """The drill's ``seed`` (0 to 2**32-1, or none) and ``backup_id`` (a backup id, or none)."""
    seed, backup = params.get("seed"), params.get("backup_id") or None
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX
    ):
        raise ParamError(f"param 'seed' must be a whole number from 0 to {SEED_MAX}, got {seed!r}")
    if backup is not None and (not isinstance(backup, str) or len(backup) > BACKUP_ID_MAX):
        raise ParamError(
            "param 'backup_id' must be a backup id like <target>_<YYYYMMDDTHHMMSSZ>_<kind> "
            "(see `pg-backup list`)"
        )
    return seed, backup


def wants_verification(params: dict[str, Any]) -> bool:
    """False only when an emergency run was triggered with ``verify: false``."""
    return bool(params.get("verify", True))
