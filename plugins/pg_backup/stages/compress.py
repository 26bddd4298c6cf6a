"""The compress stage: the staged dump into ``db.dump.zst`` (zstd over all cores, one pass)."""

from __future__ import annotations

from pg_backup.adapters.streams import compress_staged
from pg_backup.core.layout import COMPRESSED_FILE
from pg_backup.core.records import StagedFile
from pg_backup.stages.runtime import Runtime


def compress_dump(rt: Runtime, dump: StagedFile) -> StagedFile:
    """Compress the run's dump (its size and sha256 checked while reading)."""
    return compress_staged(
        rt.staging,
        dump,
        COMPRESSED_FILE,
        level=rt.cfg.compress.level,
        threads=rt.cfg.compress.threads,
    )
