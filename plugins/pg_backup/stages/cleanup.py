"""The backup run's last teardown: remove its staging files once its set is complete."""

from __future__ import annotations

from pg_backup.adapters.staging import remove_dir
from pg_backup.stages.runtime import Runtime


def cleanup_staging(rt: Runtime, complete: bool) -> str:
    """Remove the run's staging directory if its set is complete; keep it for inspection if not.

    Kept directories are removed by the retention sweep after ``retention.staging_keep_days``.
    """
    path = rt.run.staging_path
    if not complete:
        return f"kept {path}: the run did not complete its set"
    remove_dir(path)
    return f"removed {path}"
