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


def wants_verification(params: dict[str, Any]) -> bool:
    """False only when an emergency run was triggered with ``verify: false``."""
    return bool(params.get("verify", True))
