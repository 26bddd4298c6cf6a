"""One pass over the dump's bytes: pg_dump's output is hashed while it is written, never reread."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pg_backup.core import layout
from pg_backup.stages.runtime import Runtime
from tests.integration.test_failures import SMALL_SCHEMA

# Paths opened for reading while a watch is on (None: no watch). An audit hook cannot be
# removed, so one hook is installed once and only records while a test asks it to.
_READS: list[str] | None = None
_HOOKED = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or _READS is None:
        return
    path, mode, flags = args
    if isinstance(path, int):
        return
    if isinstance(mode, str):
        reading = "r" in mode or "+" in mode
    else:
        reading = (flags or 0) & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)
    if reading:
        _READS.append(os.fsdecode(path))


def _watch_reads() -> list[str]:
    global _READS, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED = True
    _READS = []
    return _READS


def _stop_watching() -> None:
    global _READS
    _READS = None


@pytest.mark.parametrize("jobs", [1, 2])
def test_dump_file_is_hashed_as_written_and_never_read_back(harness_factory, jobs):
    """The dump stage opens db.dump (or db.dump.part) for reading zero times; its record is right."""
    from pg_backup.stages.dump import run_dump

    h = harness_factory("file", schema=SMALL_SCHEMA)
    cfg = h.write_config(dump={"jobs": jobs})
    run = h.run_info()
    reads = _watch_reads()
    try:
        dumped = run_dump(Runtime(cfg, run))
    finally:
        _stop_watching()
    path = run.staging_path / layout.DUMP_FILE
    names = {layout.DUMP_FILE, layout.DUMP_FILE + ".part"}
    reread = [p for p in reads if Path(p).name in names]
    assert reread == [], reread
    data = path.read_bytes()
    assert dumped.dump.bytes == len(data) > 0
    assert dumped.dump.sha256 == hashlib.sha256(data).hexdigest()
    assert not path.with_name(path.name + ".part").exists()
    if jobs == 1:
        assert data[:5] == b"PGDMP"


def test_watch_sees_a_reread(tmp_path):
    """The read watch above can fail: it records a staged file opened for hashing."""
    from pg_backup.adapters.staging import verify_file, write_small

    path = tmp_path / layout.DUMP_FILE
    record = write_small(path, b"PGDMP and some bytes")
    reads = _watch_reads()
    try:
        verify_file(path, record)
    finally:
        _stop_watching()
    assert str(path) in reads
