"""The backup run's last teardown: remove its staging files once its set is complete."""

from __future__ import annotations

from pg_backup.stages.runtime import Runtime


def cleanup_staging(rt: Runtime, complete: bool) -> str:
    """Remove the run's staged files if its set is complete; keep them for inspection if not.

    Kept files are removed by the retention sweep after ``retention.staging_keep_days``.
    """
    if not complete:
        return f"kept {rt.staging.describe('')}: the run did not complete its set"
    return rt.staging.remove()
