"""Tests for pg_backup.adapters.staging: atomic outputs, one-pass hashes, S3 checksums, progress lines."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import pytest

from pg_backup.adapters.staging import (
    HashingReader,
    HashingWriter,
    Progress,
    StagedFile,
    StagedFileError,
    atomic_output,
    composite_checksum,
    write_json,
)

PART = 1024


def s3_checksum(data: bytes, part_size: int) -> str:
    """What S3 reports as ChecksumSHA256, computed independently of the package."""
    if len(data) < part_size:
        return base64.b64encode(hashlib.sha256(data).digest()).decode()
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    digests = b"".join(hashlib.sha256(p).digest() for p in parts)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{len(parts)}"


def payload(size: int) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def test_atomic_output_success_renames_part(tmp_path: Path) -> None:
    """On success the final file holds the bytes and no .part remains."""
    target = tmp_path / "sub" / "db.dump"
    with atomic_output(target) as out:
        out.write(b"hello")
        assert (tmp_path / "sub" / "db.dump.part").exists()
        assert not target.exists()
    assert target.read_bytes() == b"hello"
    assert not (tmp_path / "sub" / "db.dump.part").exists()
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_output_failure_leaves_nothing(tmp_path: Path) -> None:
    """When the block raises, neither the .part nor the final file exists afterwards."""
    target = tmp_path / "db.dump.zst"

    def write_then_fail() -> None:
        with atomic_output(target) as out:
            out.write(b"x" * 10_000)
            assert (tmp_path / "db.dump.zst.part").exists()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_failure_keeps_previous_file(tmp_path: Path) -> None:
    """A failed rewrite does not destroy or truncate the file from an earlier attempt."""
    target = tmp_path / "db.dump"
    target.write_bytes(b"previous")

    def interrupted_rewrite() -> None:
        with atomic_output(target) as out:
            out.write(b"new")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted_rewrite()
    assert target.read_bytes() == b"previous"
    assert not (tmp_path / "db.dump.part").exists()


def test_hashing_reader_accepts_matching_record(tmp_path: Path) -> None:
    """Reading exactly the recorded bytes passes the check."""
    data = payload(5000)
    record = StagedFile(name="f", bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    reader = HashingReader(io.BytesIO(data))
    while reader.read(777):
        pass
    reader.check(tmp_path / "f", record)
    assert reader.count == len(data)


def test_hashing_reader_readinto_hashes(tmp_path: Path) -> None:
    """readinto (what streaming libraries call) counts and hashes like read."""
    data = payload(3000)
    reader = HashingReader(io.BytesIO(data))
    buffer = bytearray(1000)
    while reader.readinto(buffer):
        pass
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.count == len(data)


def test_hashing_reader_check_names_both_hashes(tmp_path: Path) -> None:
    """A changed file raises StagedFileError naming the path, the recorded and the read hash."""
    recorded = hashlib.sha256(b"original").hexdigest()
    changed = b"tampered"
    reader = HashingReader(io.BytesIO(changed))
    reader.read()
    path = tmp_path / "db.dump"
    with pytest.raises(StagedFileError) as info:
        reader.check(path, StagedFile(name="db.dump", bytes=len(changed), sha256=recorded))
    message = str(info.value)
    assert recorded in message
    assert hashlib.sha256(changed).hexdigest() in message
    assert str(path) in message


def test_hashing_reader_check_catches_short_read(tmp_path: Path) -> None:
    """Stopping before the end (fewer bytes than recorded) fails the check."""
    data = payload(2000)
    reader = HashingReader(io.BytesIO(data))
    reader.read(1000)
    with pytest.raises(StagedFileError, match="expected 2000 bytes"):
        reader.check(
            tmp_path / "f",
            StagedFile(name="f", bytes=2000, sha256=hashlib.sha256(data).hexdigest()),
        )


@pytest.mark.parametrize("size", [PART, PART + 1, 3 * PART, 3 * PART + 17, 10 * PART - 1])
def test_composite_checksum_matches_s3_multipart(size: int) -> None:
    """At or above the part size: base64(sha256(concat(part digests)))-N, like S3."""
    data = payload(size)
    digests = [hashlib.sha256(data[i : i + PART]).digest() for i in range(0, size, PART)]
    expected = s3_checksum(data, PART)
    assert expected.endswith(f"-{len(digests)}")
    assert composite_checksum(digests, size, PART) == expected


@pytest.mark.parametrize("size", [0, 1, PART - 1])
def test_composite_checksum_single_part_is_plain(size: int) -> None:
    """Below the multipart threshold S3 reports the plain base64 sha256 of the object."""
    data = payload(size)
    digests = [hashlib.sha256(data).digest()] if size else []
    expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert composite_checksum(digests, size, PART) == expected
    assert "-" not in expected or expected == s3_checksum(data, PART)


@pytest.mark.parametrize("size", [0, 100, PART - 1, PART, 2 * PART, 4 * PART + 5])
@pytest.mark.parametrize("write_size", [1, 333, PART, 5000])
def test_hashing_writer_part_size_gives_s3_checksum(size: int, write_size: int) -> None:
    """Whatever the write sizes, HashingWriter(part_size) records what S3 will report."""
    data = payload(size)
    sink = io.BytesIO()
    writer = HashingWriter(sink, part_size=PART)
    for i in range(0, size, write_size):
        assert writer.write(data[i : i + write_size]) == len(data[i : i + write_size])
    record = writer.staged("db.dump.zst.age", 1.23456)
    assert sink.getvalue() == data
    assert record.bytes == size
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.part_size == PART
    assert record.composite_sha256 == s3_checksum(data, PART)
    assert record.seconds == 1.235


def test_hashing_writer_without_part_size_has_no_composite() -> None:
    """Without a part size there is no composite checksum to claim."""
    writer = HashingWriter(io.BytesIO())
    writer.write(b"abc")
    record = writer.staged("x", 0)
    assert record.composite_sha256 is None
    assert record.part_size is None
    assert StagedFile.from_xcom(json.loads(json.dumps(record.to_xcom()))) == record


def test_write_json_record_matches_file(tmp_path: Path) -> None:
    """write_json's record (size, sha256) describes exactly the bytes on disk."""
    path = tmp_path / "tables.json"
    doc = {"backup_id": "voting_20250309T020000Z_scheduled", "relations": [{"rows": 3}]}
    record = write_json(path, doc)
    data = path.read_bytes()
    assert record.name == "tables.json"
    assert record.bytes == len(data)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert json.loads(data) == doc
    assert not (tmp_path / "tables.json.part").exists()


def _progress_lines(caplog: pytest.LogCaptureFixture, stage: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{stage}:")]


def test_progress_logs_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    """With every=0 each update logs a line with bytes so far and the total."""
    caplog.set_level(logging.INFO, logger="pg_backup.adapters.staging")
    progress = Progress("compress", total=3_000_000, every=0)
    for done in (1_000_000, 2_000_000, 3_000_000):
        progress.update(done)
    lines = _progress_lines(caplog, "compress")
    assert len(lines) == 3
    assert "1.0 MB of 3.0 MB so far" in lines[0]
    assert "3.0 MB of 3.0 MB so far" in lines[2]


def test_progress_silent_within_interval(caplog: pytest.LogCaptureFixture) -> None:
    """Within the interval updates log nothing; the summary still logs exactly one line."""
    caplog.set_level(logging.INFO, logger="pg_backup.adapters.staging")
    progress = Progress("encrypt", total=10, every=3600)
    for done in range(1000):
        progress.update(done)
    assert _progress_lines(caplog, "encrypt") == []
    progress.summary(2_000_000, 1_000_000)
    done_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encrypt")]
    assert len(done_lines) == 1
    assert "encrypt done: in 2.0 MB, out 1.0 MB, ratio 2.00" in done_lines[0]


def test_s3_checksum_comparison_tolerates_a_missing_part_count() -> None:
    """A composite checksum matches with or without '-N'; another hash or part count does not."""
    from pg_backup.adapters.storage import same_checksum

    assert same_checksum("abc=-2", "abc=-2")
    assert same_checksum("abc=", "abc=-2")  # moto's form of a multipart checksum
    assert not same_checksum("abd=", "abc=-2")
    assert not same_checksum("abc=-3", "abc=-2")


def test_progress_watching_logs_while_a_child_works(caplog: pytest.LogCaptureFixture) -> None:
    """watching() logs the measure from a side thread while the block waits, and stops after."""
    import logging
    import time

    from pg_backup.adapters.staging import Progress

    progress = Progress("restore", every=0.05)
    calls: list[int] = []

    def measure() -> int:
        calls.append(1)
        return 10_000_000 * len(calls)

    with (
        caplog.at_level(logging.INFO, logger="pg_backup.adapters.staging"),
        progress.watching(measure),
    ):
        time.sleep(0.4)
    seen = len(calls)
    time.sleep(0.2)
    assert seen >= 2
    assert len(calls) == seen  # the side thread ended with the block
    assert any("restore:" in r.getMessage() and "so far" in r.getMessage() for r in caplog.records)


def test_staged_record_names_the_writing_host(tmp_path: Path) -> None:
    """Every staged record carries the host that wrote it (Airflow's hostname)."""
    from pg_backup.adapters.staging import this_host

    record = write_json(tmp_path / "tables.json", {"a": 1})
    assert record.host == this_host()
    assert record.host


def test_missing_file_from_another_host_names_both_hosts_and_the_fix(tmp_path: Path) -> None:
    """A file written on another worker and absent here is StagingNotShared, failed without retries."""
    from airflow.sdk.exceptions import AirflowFailException

    from pg_backup.adapters.staging import check_present, this_host
    from pg_backup.core.errors import StagingNotShared

    record = StagedFile(name="db.dump", bytes=10, sha256="0" * 64, host="worker-a.example")
    with pytest.raises(StagingNotShared) as caught:
        check_present(tmp_path / "db.dump", record)
    message = str(caught.value)
    assert "'worker-a.example'" in message
    assert repr(this_host()) in message
    assert "staging_dir" in message and "s3://" in message
    assert isinstance(caught.value, AirflowFailException)
    assert isinstance(caught.value, StagedFileError)


def test_missing_file_from_this_host_is_a_plain_missing_file(tmp_path: Path) -> None:
    """The same host, or an older record without a host, keeps the plain 'missing' message."""
    from pg_backup.adapters.staging import check_present, this_host
    from pg_backup.core.errors import StagingNotShared

    for host in (this_host(), None):
        record = StagedFile(name="db.dump", bytes=10, sha256="0" * 64, host=host)
        with pytest.raises(StagedFileError, match="is missing") as caught:
            check_present(tmp_path / "db.dump", record)
        assert not isinstance(caught.value, StagingNotShared)


HOST_PROBE = """
import sys
from pg_backup.adapters.staging import this_host
if sys.argv[1] == "task":
    import airflow.sdk.api.client  # what Airflow's task runner has loaded in a task process
name = this_host()
print(name, "airflow" in sys.modules)
"""


@pytest.mark.parametrize("where", ["task", "cli"])
def test_the_writing_host_is_airflows_name_in_a_task_and_never_imports_airflow(
    tmp_path: Path, where: str
) -> None:
    """In a task the host is ``[core] hostname_callable``'s; elsewhere the FQDN, without importing
    Airflow (it would cost a one-stage process about 0.4 s and 100 MB of peak RSS)."""
    import socket
    import subprocess
    import sys

    env = dict(
        os.environ,
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.e2e.worker_host.hostname",
        PGB_E2E_HOSTNAME="worker-probe.example",
    )
    out = subprocess.run(
        [sys.executable, "-c", HOST_PROBE, where],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    ).stdout.split()
    if where == "task":
        assert out == ["worker-probe.example", "True"]
    else:
        assert out == [socket.getfqdn(), "False"]
