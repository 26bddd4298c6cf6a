"""The staging directory: atomic outputs, hashes taken in the pass that moves the bytes, progress.

Stages hand files to each other here. Every output is written to ``*.part``, fsynced and renamed,
so a crashed or killed stage never leaves a file that looks finished. Every input is checked
against the size and sha256 its producer recorded, in the same pass that reads it.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import hashlib
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pg_backup.core.errors import StagedFileError, StagingNotShared
from pg_backup.core.records import StagedFile

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PROGRESS_EVERY = 30.0


class Progress:
    """Logs bytes so far and rate at most every ``every`` seconds, then one summary line."""

    def __init__(self, stage: str, total: int | None = None, every: float = PROGRESS_EVERY):
        self.stage = stage
        self.total = total
        self.every = every
        self.started = time.monotonic()
        self._last = self.started

    def update(self, done: int) -> None:
        """Log progress if the interval has passed."""
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.started
        of = f" of {_mb(self.total)}" if self.total else ""
        log.info(
            "%s: %s%s so far, %.1f MB/s, %.0f s",
            self.stage,
            _mb(done),
            of,
            done / 1e6 / max(elapsed, 1e-9),
            elapsed,
        )

    @property
    def seconds(self) -> float:
        """Seconds since the stage started."""
        return time.monotonic() - self.started

    @contextmanager
    def watching(self, measure: Callable[[], int]) -> Iterator[None]:
        """Log ``measure()`` from a side thread while the block waits on another process."""
        done = threading.Event()

        def tick() -> None:
            while not done.wait(min(self.every, 5.0)):
                try:
                    self.update(measure())
                except Exception:  # noqa: BLE001 - a failed measurement must not stop the stage
                    log.debug("progress measurement failed", exc_info=True)

        thread = threading.Thread(target=tick, name=f"progress-{self.stage}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def summary(self, bytes_in: int, bytes_out: int) -> None:
        """The one line each stage logs when it is done."""
        seconds = self.seconds
        ratio = bytes_in / bytes_out if bytes_out else 0.0
        log.info(
            "%s done: in %s, out %s, ratio %.2f, %.1f MB/s, %.1f s",
            self.stage,
            _mb(bytes_in),
            _mb(bytes_out),
            ratio,
            bytes_in / 1e6 / max(seconds, 1e-9),
            seconds,
        )


def _mb(value: int | None) -> str:
    return f"{(value or 0) / 1e6:,.1f} MB"


class HashingWriter:
    """A write-only file wrapper that hashes (whole and per part) what passes through."""

    def __init__(
        self, raw: IO[bytes], part_size: int | None = None, progress: Progress | None = None
    ):
        self.raw = raw
        self.count = 0
        self._sha = hashlib.sha256()
        self._part_size = part_size
        self._part = hashlib.sha256()
        self._part_fill = 0
        self._parts: list[bytes] = []
        self._progress = progress

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write and hash; return the number of bytes written."""
        view = memoryview(data)
        self.raw.write(view)
        self._sha.update(view)
        self.count += len(view)
        if self._part_size:
            self._feed_parts(view)
        if self._progress:
            self._progress.update(self.count)
        return len(view)

    def _feed_parts(self, view: memoryview) -> None:
        assert self._part_size
        while len(view):
            take = min(len(view), self._part_size - self._part_fill)
            self._part.update(view[:take])
            self._part_fill += take
            view = view[take:]
            if self._part_fill == self._part_size:
                self._parts.append(self._part.digest())
                self._part = hashlib.sha256()
                self._part_fill = 0

    def flush(self) -> None:
        """Flush the underlying file."""
        self.raw.flush()

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written."""
        return self._sha.hexdigest()

    def composite_sha256(self) -> str | None:
        """S3's checksum for this content uploaded as a multipart with ``part_size`` parts."""
        if not self._part_size:
            return None
        parts = list(self._parts)
        if self._part_fill:
            parts.append(self._part.digest())
        return composite_checksum(parts, self.count, self._part_size)

    def staged(self, name: str, seconds: float) -> StagedFile:
        """The record describing what was written."""
        return StagedFile(
            name=name,
            bytes=self.count,
            sha256=self.sha256,
            seconds=round(seconds, 3),
            part_size=self._part_size,
            composite_sha256=self.composite_sha256(),
            host=this_host(),
        )


def composite_checksum(part_digests: list[bytes], size: int, part_size: int) -> str:
    """S3 ``ChecksumSHA256`` value: the plain hash below the multipart threshold, else composite."""
    if size < part_size:
        whole = part_digests[0] if part_digests else hashlib.sha256(b"").digest()
        return base64.b64encode(whole).decode()
    combined = hashlib.sha256(b"".join(part_digests)).digest()
    return f"{base64.b64encode(combined).decode()}-{len(part_digests)}"


class HashingReader:
    """A read-only file wrapper that hashes what is read and checks it against a record."""

    def __init__(self, raw: IO[bytes], progress: Progress | None = None):
        self.raw = raw
        self.count = 0
        self._sha = hashlib.sha256()
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        """Read, hash and count."""
        data = self.raw.read(size)
        self._sha.update(data)
        self.count += len(data)
        if self._progress:
            self._progress.update(self.count)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Read into a buffer, hash and count."""
        got = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if got:
            view = memoryview(buffer)[:got]
            self._sha.update(view)
            self.count += got
            if self._progress:
                self._progress.update(self.count)
        return int(got or 0)

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything read so far."""
        return self._sha.hexdigest()

    def check(self, path: Path | str, expected: StagedFile) -> None:
        """After a full read: fail if the bytes were not the ones the producer recorded."""
        if self.count != expected.bytes or self.sha256 != expected.sha256:
            raise StagedFileError(
                f"staged file {path} changed after its stage wrote it: expected "
                f"{expected.bytes} bytes sha256 {expected.sha256}, read {self.count} bytes sha256 "
                f"{self.sha256}. Clear the run from its first stage to rebuild it"
            )


@functools.cache
def this_host() -> str:
    """The worker's name as Airflow records it on task instances (``[core] hostname_callable``).

    Inside a task Airflow's task runner has already loaded ``airflow.sdk.api.client``, whose
    ``get_hostname`` names the worker. A process without it (the command line, the benchmark's
    one-stage processes) gets the machine's FQDN: importing Airflow only to ask its name would
    cost that process about 0.4 s and 100 MB of peak RSS (measured on the compress stage), and
    the name only words the error for a staged file that is missing.
    """
    client = sys.modules.get("airflow.sdk.api.client")
    if client is not None:
        try:
            return str(client.get_hostname())
        except Exception:  # noqa: BLE001 - a broken hostname_callable: the machine's name will do
            pass
    return socket.getfqdn()


@functools.cache
def _not_shared_class() -> type[StagingNotShared]:
    """StagingNotShared that Airflow also fails at once: a retry cannot make staging shared."""
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # pragma: no cover - the command line runs without Airflow's SDK too
        return StagingNotShared
    return type("StagingNotShared", (StagingNotShared, AirflowFailException), {})


def not_shared(where: str, expected: StagedFile) -> StagingNotShared:
    """The error for a file written by another worker that this one cannot see."""
    return _not_shared_class()(
        f"staged file {where} was written by host {expected.host!r} and is not visible on host "
        f"{this_host()!r}: staging is not shared between the workers. Set staging_dir to a "
        "directory every worker mounts (a shared volume), or stage in an object store "
        "(staging_url: s3://<bucket>/<prefix>, see the README's 'Workers that share no disk'). "
        "Then clear the run from its first stage"
    )


class PipeToFile:
    """A child's stdout copied into ``path.part`` by a side thread, hashed as it is written.

    The bytes are read once, from the pipe: the sha256 is taken as they go to disk, so a dump
    the size of the database is never read back to hash it. ``finish`` fsyncs and renames the
    part; ``discard`` removes it. When the copy fails (a full disk), the thread closes the pipe,
    so the child ends on a broken pipe instead of blocking forever.
    """

    # Pipe buffer asked of the kernel (bytes): fewer wake-ups than the 64 KiB default; the
    # kernel caps it at /proc/sys/fs/pipe-max-size (1 MiB unless raised).
    PIPE_SIZE = 1024 * 1024

    def __init__(self, source: IO[bytes], path: Path, progress: Progress | None = None):
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._source = source
        self._progress = progress
        self._error: BaseException | None = None
        self._widen_pipe()
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._handle = os.fdopen(fd, "wb", buffering=CHUNK)
        self._writer = HashingWriter(self._handle, progress=progress)
        self._thread = threading.Thread(target=self._copy, name=f"pipe-{path.name}", daemon=True)
        self._thread.start()

    def _widen_pipe(self) -> None:
        import fcntl

        try:
            fcntl.fcntl(self._source.fileno(), fcntl.F_SETPIPE_SZ, self.PIPE_SIZE)  # type: ignore[attr-defined]
        except (OSError, AttributeError, ValueError):
            pass  # a smaller pipe only means more reads

    def _copy(self) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            while got := self._source.readinto(buffer):  # type: ignore[attr-defined]
                self._writer.write(view[:got])
            self._handle.flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc
            with contextlib.suppress(OSError):
                self._source.close()

    @property
    def bytes(self) -> int:
        """Bytes written so far."""
        return self._writer.count

    def check(self) -> None:
        """Raise the copy's error, if it failed (a full disk names the part file and the fix).

        :raises StagedFileError: the disk filled up
        """
        error = self._error
        if error is None:
            return
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise no_space(self.part) from None
        raise error

    def finish(self, seconds: float) -> StagedFile:
        """After the child exited: wait for the last bytes, fsync, rename; the file's record.

        :raises StagedFileError: the disk filled up
        """
        self._thread.join()
        try:
            self.check()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self.part, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            self.discard()
            raise
        return self._writer.staged(self.path.name, seconds)

    def discard(self) -> None:
        """After the child exited: remove the part file (the copy has met the pipe's end)."""
        self._thread.join()
        with contextlib.suppress(OSError):
            self._handle.close()
        self.part.unlink(missing_ok=True)


def check_present(path: Path, expected: StagedFile) -> None:
    """Cheap check before a stage starts reading: the file exists and has the recorded size.

    :raises StagingNotShared: the file is missing here and was written on another host
    :raises StagedFileError: the file is missing or has another size
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if expected.host and expected.host != this_host():
            raise not_shared(str(path), expected) from None
        raise StagedFileError(
            f"staged file {path} is missing (its stage recorded {expected.bytes} bytes sha256 "
            f"{expected.sha256}). Is the staging directory shared by every worker? Clear the run "
            "from its first stage to rebuild it"
        ) from None
    if size != expected.bytes:
        raise StagedFileError(
            f"staged file {path} changed after its stage wrote it: expected {expected.bytes} "
            f"bytes sha256 {expected.sha256}, found {size} bytes. Clear the run from its first "
            "stage to rebuild it"
        )


def verify_file(path: Path, expected: StagedFile, stage: str = "check") -> None:
    """Read a staged file once and fail if its size or sha256 differ from the record."""
    check_present(path, expected)
    with path.open("rb") as raw:
        reader = HashingReader(raw, Progress(f"{stage}: hashing {path.name}", expected.bytes))
        while reader.read(CHUNK):
            pass
    reader.check(path, expected)


def no_space(path: Path) -> StagedFileError:
    """The error for a full disk: names the file, the free space left and the fix."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e9:,.2f} GB free"
    except OSError:
        free = "free space unknown"
    return StagedFileError(
        f"no space left on device writing {path} ({free} there): free space on that "
        "filesystem, or point staging_dir at a larger volume (preflight estimates the need)"
    )


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` via ``path.part``: fsync and rename on success, remove on any failure.

    :raises StagedFileError: the disk is full (naming the path), after removing the part
    """
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=CHUNK) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, path)
        fsync_dir(path.parent)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise no_space(path) from None
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> StagedFile:
    """Write a small JSON document atomically and return its record."""
    import json

    return write_small(path, json.dumps(data, indent=2, sort_keys=True).encode())


def write_small(path: Path, payload: bytes) -> StagedFile:
    """Write a small file atomically and return its record."""
    started = time.monotonic()
    with atomic_output(path) as handle:
        writer = HashingWriter(handle)
        writer.write(payload)
    return writer.staged(path.name, time.monotonic() - started)


def prepare_dir(path: Path) -> Path:
    """Create the run's staging directory, private to this user."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def remove_dir(path: Path) -> bool:
    """Remove a run's staging directory; True if something was removed."""
    if not path.exists():
        return False
    shutil.rmtree(path)
    return True


def read_small(path: Path, expected: StagedFile) -> bytes:
    """Read a small staged file whole, checked against its record."""
    check_present(path, expected)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected.sha256:
        raise StagedFileError(
            f"staged file {path} changed after its stage wrote it: sha256 "
            f"{hashlib.sha256(data).hexdigest()} instead of {expected.sha256}"
        )
    return data
