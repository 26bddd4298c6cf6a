"""Where one backup run's stages hand files to each other: a directory, or an object store.

``LocalStaging`` is ``staging_dir/<target>/<backup id>/``: every worker must see the same
directory (LocalExecutor, or a volume shared by every worker). ``ObjectStaging`` keeps the
run's files below ``staging_url`` (``s3://bucket/prefix/<target>/<backup id>/``) for workers
that share no disk (Celery, Kubernetes). Stages speak to the interface only:

* ``reader``/``writer`` stream a staged file in and out (memory stays flat: one multipart part
  at most), hashed by the caller while the bytes move;
* ``publish`` turns a file a tool wrote in the local ``workdir`` (pg_dump's output) into a
  staged file; ``local_copy`` gives a tool that needs a seekable file (pg_restore -j, the
  upload's multipart transfer) a local path;
* ``remove`` is the teardown's, ``sweep_runs`` the retention sweep's.

An object being written is invisible until it is complete: S3 shows a multipart upload only
when it is completed (the store's own ``*.part``-then-rename), and a failed one is aborted.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pg_backup.adapters import staging
from pg_backup.adapters.staging import HashingReader, Progress
from pg_backup.adapters.storage import Storage
from pg_backup.core.config import StorageConfig, TargetConfig
from pg_backup.core.errors import StagedFileError, StorageError
from pg_backup.core.layout import RunInfo
from pg_backup.core.records import StagedFile

log = logging.getLogger(__name__)


class RunStaging(ABC):
    """The staged files of one backup run; ``workdir`` is this worker's local directory."""

    def __init__(self, workdir: Path):
        self.workdir = workdir

    @abstractmethod
    def describe(self, name: str) -> str:
        """Where a staged file lives, for messages."""

    @abstractmethod
    def check(self, staged: StagedFile, full: bool = False) -> None:
        """The file is there with its recorded size (``full``: and its sha256, read once).

        :raises StagingNotShared: absent here, written by another host on local staging
        :raises StagedFileError: absent or different
        """

    @abstractmethod
    @contextmanager
    def reader(self, staged: StagedFile) -> Iterator[IO[bytes]]:
        """A stream of the staged file (the caller hashes and checks it while reading)."""

    @abstractmethod
    @contextmanager
    def writer(self, name: str) -> Iterator[IO[bytes]]:
        """A stream that becomes staged file ``name`` when the block ends without error."""

    @abstractmethod
    def publish(self, path: Path, staged: StagedFile) -> None:
        """Make a finished file in ``workdir`` the staged file ``staged`` describes."""

    @abstractmethod
    @contextmanager
    def local_copy(self, staged: StagedFile, why: str, checked: bool = True) -> Iterator[Path]:
        """A local path holding the staged file (``checked``: its sha256 proven first)."""

    @abstractmethod
    def send(
        self, staged: StagedFile, store: Storage, key: str, retain_until: datetime | None
    ) -> None:
        """Upload the staged file to ``key`` of the backup storage, proven as ``put_file`` does."""

    @abstractmethod
    def remove(self) -> str:
        """Remove the run's staged files (and local work files); say what was removed."""

    # Notes: small files a stage leaves for a later task of the run that has no record of them
    # (the verify stage's verification.json, read by mark_verified even when verify failed).

    def write_note(self, name: str, data: bytes) -> None:
        """Stage a small file whole (atomically: a reader sees all of it or nothing)."""
        with self.writer(name) as out:
            out.write(data)

    @abstractmethod
    def read_note(self, name: str) -> bytes | None:
        """A note written by ``write_note`` (by any worker), or None when there is none."""

    @abstractmethod
    def drop_note(self, name: str) -> None:
        """Remove a note, if there is one."""

    def read_small(self, staged: StagedFile) -> bytes:
        """A small staged file, whole, checked against its record."""
        with self.reader(staged) as raw:
            data = raw.read()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != staged.bytes or digest != staged.sha256:
            raise StagedFileError(
                f"staged file {self.describe(staged.name)} changed after its stage wrote it: "
                f"{len(data)} bytes sha256 {digest} instead of {staged.bytes} bytes "
                f"{staged.sha256}. Clear the run from its first stage to rebuild it"
            )
        return data


class LocalStaging(RunStaging):
    """``staging_dir/<target>/<backup id>/``, seen by every worker that runs the DAG."""

    def describe(self, name: str) -> str:
        """The file's path."""
        return str(self.workdir / name)

    def check(self, staged: StagedFile, full: bool = False) -> None:
        """Present with its size (``full``: and its hash)."""
        path = self.workdir / staged.name
        if full:
            staging.verify_file(path, staged)
        else:
            staging.check_present(path, staged)

    @contextmanager
    def reader(self, staged: StagedFile) -> Iterator[IO[bytes]]:
        """Open the file after the cheap presence check."""
        path = self.workdir / staged.name
        staging.check_present(path, staged)
        with path.open("rb") as raw:
            yield raw

    @contextmanager
    def writer(self, name: str) -> Iterator[IO[bytes]]:
        """``atomic_output``: ``*.part``, fsync, rename."""
        with staging.atomic_output(self.workdir / name) as out:
            yield out

    def publish(self, path: Path, staged: StagedFile) -> None:
        """Nothing to do: the tool wrote straight into staging."""

    def read_note(self, name: str) -> bytes | None:
        """The file, if it is there."""
        try:
            return (self.workdir / name).read_bytes()
        except FileNotFoundError:
            return None

    def drop_note(self, name: str) -> None:
        """Unlink the file."""
        (self.workdir / name).unlink(missing_ok=True)

    @contextmanager
    def local_copy(self, staged: StagedFile, why: str, checked: bool = True) -> Iterator[Path]:
        """The staged file itself."""
        self.check(staged, full=checked)
        yield self.workdir / staged.name

    def send(
        self, staged: StagedFile, store: Storage, key: str, retain_until: datetime | None
    ) -> None:
        """``put_file`` of the staged file."""
        store.put_file(self.workdir / staged.name, key, staged, retain_until)

    def remove(self) -> str:
        """Remove the run's directory."""
        staging.remove_dir(self.workdir)
        return f"removed {self.workdir}"


class ObjectStaging(RunStaging):
    """``staging_url/<target>/<backup id>/`` in an S3 bucket, through the storage's connection.

    :param store: the S3 storage rooted at ``staging_url``
    :param prefix: the run's key prefix below it (``<target>/<backup id>/``)
    :param workdir: this worker's local directory for tool outputs and local copies
    :param part_size: bytes per multipart part, spooled in ``workdir`` while it fills
    """

    def __init__(self, store: Any, prefix: str, workdir: Path, part_size: int):
        super().__init__(workdir)
        self.store = store
        self.prefix = prefix
        self.part_size = part_size

    def _key(self, name: str) -> str:
        return self.store._key(self.prefix + name)  # type: ignore[no-any-return]

    def describe(self, name: str) -> str:
        """The object's URL."""
        return str(self.store.describe(self.prefix + name))

    def _missing(self, staged: StagedFile) -> StagedFileError:
        return StagedFileError(
            f"staged object {self.describe(staged.name)} is missing (written by host "
            f"{staged.host!r}: {staged.bytes} bytes sha256 {staged.sha256}). The sweep or a "
            "lifecycle rule may have removed it: clear the run from its first stage to rebuild it"
        )

    def _get(self, staged: StagedFile) -> Any:
        from botocore.exceptions import ClientError

        try:
            response = self.store.client.get_object(
                Bucket=self.store.bucket, Key=self._key(staged.name)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise self._missing(staged) from None
            raise StorageError(
                f"read {self.describe(staged.name)}: S3 error "
                f"{exc.response.get('Error', {}).get('Code', '?')}"
            ) from None
        size = int(response["ContentLength"])
        if size != staged.bytes:
            response["Body"].close()
            raise StagedFileError(
                f"staged object {self.describe(staged.name)} changed after its stage wrote it: "
                f"expected {staged.bytes} bytes, found {size}. Clear the run from its first "
                "stage to rebuild it"
            )
        return response["Body"]

    def check(self, staged: StagedFile, full: bool = False) -> None:
        """HEAD for the size (``full``: stream it once for the hash)."""
        if full:
            with self.reader(staged) as raw:
                reader = HashingReader(raw, Progress(f"check {staged.name}", staged.bytes))
                while reader.read(staging.CHUNK):
                    pass
            reader.check(self.describe(staged.name), staged)
            return
        self._get(staged).close()

    @contextmanager
    def reader(self, staged: StagedFile) -> Iterator[IO[bytes]]:
        """The object's body, streamed as it is read."""
        body = self._get(staged)
        try:
            yield body
        finally:
            body.close()

    @contextmanager
    def writer(self, name: str) -> Iterator[IO[bytes]]:
        """A multipart upload of ``part_size`` parts: visible only once completed."""
        out = _MultipartWriter(
            self.store, self._key(name), self.part_size, self.describe(name), self.workdir
        )
        try:
            yield out  # type: ignore[misc]
            out.complete()
        except BaseException:
            out.abort()
            raise

    def read_note(self, name: str) -> bytes | None:
        """The object, if it is there."""
        if not self.store.exists(self.prefix + name):
            return None
        return bytes(self.store.get_bytes(self.prefix + name))

    def drop_note(self, name: str) -> None:
        """Delete the object."""
        if self.store.exists(self.prefix + name):
            self.store.delete(self.prefix + name)

    def publish(self, path: Path, staged: StagedFile) -> None:
        """Stream the local file up (checked while read), then remove the local copy."""
        with path.open("rb") as raw, self.writer(staged.name) as out:
            reader = HashingReader(raw, Progress(f"stage {staged.name}", staged.bytes))
            while chunk := reader.read(staging.CHUNK):
                out.write(chunk)
            reader.check(path, staged)
        path.unlink()
        log.info("staging: %s stored as %s", path.name, self.describe(staged.name))

    @contextmanager
    def local_copy(self, staged: StagedFile, why: str, checked: bool = True) -> Iterator[Path]:
        """Download to ``workdir`` (hash checked as it arrives); removed afterwards."""
        staging.prepare_dir(self.workdir)
        path = self.workdir / staged.name
        log.info(
            "staging: copying %s (%s bytes) to local disk %s: %s",
            self.describe(staged.name),
            f"{staged.bytes:,}",
            path,
            why,
        )
        try:
            with self.reader(staged) as raw, staging.atomic_output(path) as out:
                reader = HashingReader(raw, Progress(f"copy {staged.name}", staged.bytes))
                while chunk := reader.read(staging.CHUNK):
                    out.write(chunk)
                reader.check(self.describe(staged.name), staged)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def send(
        self, staged: StagedFile, store: Storage, key: str, retain_until: datetime | None
    ) -> None:
        """Stream the staged object into the backup storage (no local copy)."""
        with self.reader(staged) as raw:
            store.put_stream(raw, key, staged, retain_until)

    def remove(self) -> str:
        """Delete every object of the run, and this worker's local work directory."""
        removed = 0
        for found in list(self.store.list(self.prefix)):
            self.store.delete(found.key)
            removed += 1
        staging.remove_dir(self.workdir)
        return f"removed {removed} staged object(s) at {self.store.describe(self.prefix)}"


class _MultipartWriter:
    """A write-only stream into one S3 object: parts of ``part_size`` bytes, then complete.

    Each part is gathered in a temporary file in the worker's own directory and sent from it,
    so the writer holds one write call's bytes in memory whatever the part size. (Gathered in
    memory, a 64 MiB part and the copy sent cost a compress stage 402 MB of peak RSS at 256 MB
    of input: tests/benchmarks/staging_bench.py --part-mb 64.)
    """

    def __init__(self, store: Any, key: str, part_size: int, where: str, workdir: Path):
        self.store = store
        self.key = key
        self.part_size = part_size
        self.where = where
        workdir.mkdir(parents=True, exist_ok=True)
        self.spool: IO[bytes] = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115
        self.fill = 0
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Spool, and send every full part."""
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), self.part_size - self.fill)
            self.spool.write(view[:take])
            self.fill += take
            view = view[take:]
            if self.fill == self.part_size:
                self._send()
        return len(data)

    def flush(self) -> None:
        """Parts go out when full; nothing to flush before that."""

    def _part(self) -> IO[bytes]:
        """The spooled part, from its start.

        botocore reads the body to its end, and rewinds it itself when it retries.
        """
        self.spool.flush()
        self.spool.seek(0)
        return self.spool

    def _next(self) -> None:
        self.spool.seek(0)
        self.spool.truncate()
        self.fill = 0

    def _send(self) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.upload_id is None:
            started = self.store._call(
                f"stage {self.where}", client.create_multipart_upload, Bucket=bucket, Key=self.key
            )
            self.upload_id = started["UploadId"]
        number = len(self.parts) + 1
        sent = self.store._call(
            f"stage {self.where}",
            client.upload_part,
            Bucket=bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=self._part(),
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._next()

    def complete(self) -> None:
        """Make the object visible: one PUT when it fits a part, else complete the upload."""
        client, bucket = self.store.client, self.store.bucket
        try:
            if self.upload_id is None:
                self.store._call(
                    f"stage {self.where}",
                    client.put_object,
                    Bucket=bucket,
                    Key=self.key,
                    Body=self._part(),
                )
                return
            if self.fill:
                self._send()
            self.store._call(
                f"stage {self.where}",
                client.complete_multipart_upload,
                Bucket=bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        finally:
            self.spool.close()

    def abort(self) -> None:
        """Drop the parts sent so far: nothing becomes visible."""
        self.spool.close()
        if self.upload_id is None:
            return
        try:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
            )
        except Exception:  # noqa: BLE001 - the sweep's stale-upload abort is the backstop
            log.warning("staging: could not abort the upload of %s", self.where, exc_info=True)


def staging_store(cfg: TargetConfig) -> Any:
    """The S3 storage rooted at ``staging_url``, through ``staging_aws_conn_id``.

    That is the first destination's ``aws_conn_id`` unless set, also in the runtime of a task
    serving another destination (``TargetConfig.for_destination`` keeps it).
    """
    from pg_backup.adapters.storage import open_storage

    assert cfg.staging_url is not None
    return open_storage(
        StorageConfig(
            url=cfg.staging_url,
            aws_conn_id=cfg.staging_connection,
            multipart_chunksize=cfg.storage.multipart_chunksize,
        )
    )


def open_run_staging(cfg: TargetConfig, run: RunInfo) -> RunStaging:
    """The run's staging: object-store when ``staging_url`` is set, else the directory."""
    if cfg.staging_url is None:
        return LocalStaging(run.staging_path)
    return ObjectStaging(
        staging_store(cfg),
        f"{run.target}/{run.backup_id}/",
        run.staging_path,
        cfg.storage.multipart_chunksize,
    )


def sweep_runs(cfg: TargetConfig, older_than: datetime) -> list[str]:
    """Delete staged objects of runs untouched since ``older_than``; abort their stale uploads.

    :returns: the run folders (backup ids) removed
    """
    if cfg.staging_url is None:
        return []
    store = staging_store(cfg)
    newest: dict[str, datetime] = {}
    keys: dict[str, list[str]] = {}
    for found in store.list(f"{cfg.name}/"):
        parts = found.key.split("/")
        if len(parts) < 3:
            continue
        run = parts[1]
        keys.setdefault(run, []).append(found.key)
        when = found.last_modified
        if when is not None and (run not in newest or when > newest[run]):
            newest[run] = when
    removed = []
    for run, run_keys in sorted(keys.items()):
        if run in newest and newest[run] < older_than:
            for key in run_keys:
                store.delete(key)
            removed.append(run)
    store.abort_stale_uploads(f"{cfg.name}/", older_than)
    return removed
