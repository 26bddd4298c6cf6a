"""Where backup sets live: one small interface, an S3 backend and a local/NAS directory backend.

Keys given to a backend are relative to the storage URL (``<target>/YYYY/MM/DD/<id>/<name>``).
Every upload is proven against what the store acknowledges: size, and the sha256 the store
computed itself (S3 ``ChecksumSHA256``) or the bytes the file backend actually wrote.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from pg_backup.adapters import staging
from pg_backup.adapters.staging import HashingReader, HashingWriter, Progress
from pg_backup.core.config import StorageConfig
from pg_backup.core.errors import StorageError
from pg_backup.core.records import StagedFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredObject:
    """An object as the store reports it."""

    key: str
    bytes: int
    last_modified: datetime | None = None


class Storage(ABC):
    """The operations backup sets need from a store."""

    url: str

    @abstractmethod
    def put_file(
        self, local: Path, key: str, staged: StagedFile, retain_until: datetime | None = None
    ) -> StoredObject:
        """Upload a staged file, check it while reading, prove the stored copy matches it."""

    @abstractmethod
    def put_stream(
        self, source: IO[bytes], key: str, staged: StagedFile, retain_until: datetime | None = None
    ) -> StoredObject:
        """put_file from a stream (a staged object in another store), hashed while it is sent.

        :raises StagedFileError: the bytes read were not the staged file's
        :raises StorageError: the store refused or holds other bytes than were sent
        """

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, retain_until: datetime | None = None
    ) -> StoredObject:
        """Store a small document (manifest, report) and prove it arrived intact."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a small document."""

    @abstractmethod
    def download(self, key: str, local: Path) -> StagedFile:
        """Fetch an object into a local file (atomically), hashing it in the same pass."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True if the key holds an object."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key (missing is fine)."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under a key prefix."""

    @abstractmethod
    def check_writable(self, key: str) -> None:
        """Prove we may write below the prefix (writes one small fixed object)."""

    def locked_until(self, key: str) -> datetime | None:
        """Object Lock retention date of a key (None: not locked, gone, or no such feature)."""
        return None

    def holds(self, key: str, staged: StagedFile) -> bool:
        """True when ``key`` holds exactly the bytes ``staged`` records (size and sha256).

        The proof a rerun needs before it skips or replaces an object: a missing key or any
        difference is False. This generic form reads the object once, hashing as it streams.
        """
        try:
            return self._stream_sha256(key) == (staged.bytes, staged.sha256)
        except StorageError:
            return False

    def _stream_sha256(self, key: str) -> tuple[int, str]:
        """(bytes, sha256) of a stored object, read once without keeping it."""
        raise NotImplementedError

    def abort_stale_uploads(self, prefix: str, older_than: datetime) -> builtins.list[str]:
        """Abort multipart uploads started before ``older_than``; return their keys."""
        return []

    def describe(self, key: str) -> str:
        """Full location of a key, for messages."""
        return f"{self.url}/{key}"

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """A small document and a tag of this version of it (None: no such key).

        The tag is what ``put_if`` compares against: S3's ETag, a file's sha256.
        """
        raise NotImplementedError

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Store a small document only if the key still holds version ``tag`` (None: absent).

        False when another writer got there first: the caller re-reads and re-applies its change.
        """
        raise NotImplementedError


def same_checksum(stored: str, expected: str) -> bool:
    """Compare S3 checksums; a composite's ``-N`` part count is compared only when both show it.

    AWS reports a multipart checksum as ``<base64>-<parts>``; some S3-compatible stores (moto,
    for one) report the same hash of part hashes without the suffix.
    """
    stored_hash, _, stored_parts = stored.partition("-")
    expected_hash, _, expected_parts = expected.partition("-")
    if stored_hash != expected_hash:
        return False
    return not (stored_parts and expected_parts) or stored_parts == expected_parts


def _mismatch(where: str, what: str, expected: Any, got: Any) -> StorageError:
    return StorageError(
        f"{where}: the store holds {what} {got!r} but we sent {expected!r}; the upload is not "
        "trusted and will be retried"
    )


class FileStorage(Storage):
    """A local or NAS directory (``file:///path``)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.root = Path(url[len("file://") :])

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not str(path).startswith(str(self.root.resolve())):
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    def put_file(
        self, local: Path, key: str, staged: StagedFile, retain_until: datetime | None = None
    ) -> StoredObject:
        """Copy via ``.part`` + fsync + rename, hashing source and written bytes in one pass."""
        staging.check_present(local, staged)
        with local.open("rb") as raw:
            return self.put_stream(raw, key, staged, retain_until, where=str(local))

    def put_stream(
        self,
        source: IO[bytes],
        key: str,
        staged: StagedFile,
        retain_until: datetime | None = None,
        where: str | None = None,
    ) -> StoredObject:
        """Copy a stream via ``.part`` + fsync + rename, hashing both sides in one pass."""
        dest = self._path(key)
        progress = Progress(f"upload {staged.name}", staged.bytes)
        with staging.atomic_output(dest) as out:
            reader = HashingReader(source, progress)
            writer = HashingWriter(out)
            while chunk := reader.read(staging.CHUNK):
                writer.write(chunk)
            reader.check(where or staged.name, staged)
            if writer.sha256 != staged.sha256 or writer.count != staged.bytes:
                raise _mismatch(self.describe(key), "sha256", staged.sha256, writer.sha256)
        progress.summary(reader.count, writer.count)
        return StoredObject(key, dest.stat().st_size)

    def put_bytes(
        self, key: str, data: bytes, retain_until: datetime | None = None
    ) -> StoredObject:
        """Write atomically."""
        dest = self._path(key)
        with staging.atomic_output(dest) as out:
            out.write(data)
        return StoredObject(key, len(data))

    def get_bytes(self, key: str) -> bytes:
        """Read a file."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.describe(key)} does not exist") from None

    def download(self, key: str, local: Path) -> StagedFile:
        """Copy into a local file."""
        src = self._path(key)
        if not src.is_file():
            raise StorageError(f"{self.describe(key)} does not exist")
        progress = Progress(f"fetch {src.name}", src.stat().st_size)
        with src.open("rb") as raw, staging.atomic_output(local) as out:
            writer = HashingWriter(out, progress=progress)
            while chunk := raw.read(staging.CHUNK):
                writer.write(chunk)
        progress.summary(writer.count, writer.count)
        return writer.staged(local.name, progress.seconds)

    def exists(self, key: str) -> bool:
        """True if the file exists."""
        return self._path(key).is_file()

    def holds(self, key: str, staged: StagedFile) -> bool:
        """Size first (a stat), then the bytes written are hashed."""
        path = self._path(key)
        try:
            if path.stat().st_size != staged.bytes:
                return False
        except FileNotFoundError:
            return False
        return super().holds(key, staged)

    def _stream_sha256(self, key: str) -> tuple[int, str]:
        sha, size = hashlib.sha256(), 0
        try:
            with self._path(key).open("rb") as src:
                while chunk := src.read(staging.CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise StorageError(f"{self.describe(key)} does not exist") from None
        return size, sha.hexdigest()

    def delete(self, key: str) -> None:
        """Remove a file and prune empty parent directories up to the root."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # refused (permissions, an immutable file): say which and why
            raise StorageError(f"delete {self.describe(key)}: {exc.strerror}") from None
        parent = path.parent
        root = self.root.resolve()
        while parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Walk the directory below the prefix (``.part`` and ``.lock`` files are not objects)."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if name.endswith((".part", ".lock")):
                    continue
                path = Path(dirpath) / name
                stat = path.stat()
                yield StoredObject(
                    str(path.relative_to(self.root)),
                    stat.st_size,
                    datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def check_writable(self, key: str) -> None:
        """Create the root if needed and write one small file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.put_bytes(key, b"pg_backup preflight\n")
        except OSError as exc:
            raise StorageError(f"cannot write to {self.url}: {exc}") from None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Read a file and its sha256 (the version tag)."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Compare and write under an exclusive lock on ``<key>.lock`` (``flock``; NFS too)."""
        import fcntl

        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{dest}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.get_versioned(key)
                if (current[1] if current else None) != tag:
                    return False
                self.put_bytes(key, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class S3Storage(Storage):
    """An S3 bucket (or any S3-compatible store) through the amazon provider's S3Hook."""

    def __init__(self, url: str, cfg: StorageConfig, aws_conn_id: str):
        self.url = url.rstrip("/")
        rest = url[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.cfg = cfg
        self.aws_conn_id = aws_conn_id
        self._client: Any = None

    @property
    def client(self) -> Any:
        """boto3 client built lazily from the Airflow connection (endpoint_url in its extra)."""
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            self._client = S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _extra_args(self, retain_until: datetime | None) -> dict[str, Any]:
        args: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"}
        if self.cfg.storage_class:
            args["StorageClass"] = self.cfg.storage_class
        if self.cfg.sse_kms_key_id:
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = self.cfg.sse_kms_key_id
        if self.cfg.object_lock and retain_until is not None:
            args["ObjectLockMode"] = self.cfg.object_lock.mode
            args["ObjectLockRetainUntilDate"] = retain_until
        return args

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            message = exc.response.get("Error", {}).get("Message", "")
            raise StorageError(f"{what}: S3 error {code}: {message}") from None
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise StorageError(f"{what}: {exc}") from None

    def put_file(
        self, local: Path, key: str, staged: StagedFile, retain_until: datetime | None = None
    ) -> StoredObject:
        """Multipart upload with SHA256 checksums; then prove size and checksum via HEAD."""
        staging.check_present(local, staged)
        return self._upload(staged, key, retain_until, Filename=str(local))

    def put_stream(
        self, source: IO[bytes], key: str, staged: StagedFile, retain_until: datetime | None = None
    ) -> StoredObject:
        """Multipart upload from a stream (one part in memory per transfer thread), then HEAD."""
        reader = HashingReader(source)
        done = self._upload(staged, key, retain_until, Fileobj=reader)
        # The store proved it holds what was sent; this proves what was sent was the staged file.
        reader.check(f"the stream sent to {self.describe(key)}", staged)
        return done

    def _upload(
        self, staged: StagedFile, key: str, retain_until: datetime | None, **source: Any
    ) -> StoredObject:
        from boto3.s3.transfer import TransferConfig

        full = self._key(key)
        where = self.describe(key)
        chunk = self.cfg.multipart_chunksize
        # A stream is read into memory part by part: at most max_concurrency parts at once.
        config = TransferConfig(
            multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=4
        )
        config.max_in_memory_upload_chunks = 4  # s3transfer's setting; boto3's init lacks it
        progress = Progress(f"upload {staged.name}", staged.bytes)
        sent = [0]

        def on_bytes(count: int) -> None:
            sent[0] += count
            progress.update(sent[0])

        upload = self.client.upload_file if "Filename" in source else self.client.upload_fileobj
        self._call(
            f"upload {where}",
            upload,
            **source,
            Bucket=self.bucket,
            Key=full,
            ExtraArgs=self._extra_args(retain_until),
            Config=config,
            Callback=on_bytes,
        )
        head = self._call(
            f"check {where}",
            self.client.head_object,
            Bucket=self.bucket,
            Key=full,
            ChecksumMode="ENABLED",
        )
        if int(head["ContentLength"]) != staged.bytes:
            raise _mismatch(where, "size", staged.bytes, head["ContentLength"])
        stored_sum = head.get("ChecksumSHA256")
        expected_sum = staged.composite_sha256 if staged.part_size == chunk else None
        if stored_sum and expected_sum and not same_checksum(stored_sum, expected_sum):
            raise _mismatch(where, "ChecksumSHA256", expected_sum, stored_sum)
        if not stored_sum:
            # Some S3-compatible stores do not report checksums of multipart uploads; each part
            # was still checked by the store on arrival (x-amz-checksum-sha256 per part).
            log.warning("%s: the store reported no ChecksumSHA256; size verified only", where)
        progress.summary(staged.bytes, staged.bytes)
        return StoredObject(key, int(head["ContentLength"]))

    def put_bytes(
        self, key: str, data: bytes, retain_until: datetime | None = None
    ) -> StoredObject:
        """PUT with a SHA256 checksum the store verifies and echoes back."""
        expected = base64.b64encode(hashlib.sha256(data).digest()).decode()
        where = self.describe(key)
        response = self._call(
            f"upload {where}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            **self._extra_args(retain_until),
        )
        echoed = response.get("ChecksumSHA256")
        if echoed and echoed != expected:
            raise _mismatch(where, "ChecksumSHA256", expected, echoed)
        return StoredObject(key, len(data))

    def get_bytes(self, key: str) -> bytes:
        """GET a small object."""
        response = self._call(
            f"read {self.describe(key)}",
            self.client.get_object,
            Bucket=self.bucket,
            Key=self._key(key),
        )
        return bytes(response["Body"].read())

    def download(self, key: str, local: Path) -> StagedFile:
        """Stream an object into a local file, hashing as it arrives."""
        where = self.describe(key)
        response = self._call(
            f"fetch {where}", self.client.get_object, Bucket=self.bucket, Key=self._key(key)
        )
        progress = Progress(f"fetch {Path(key).name}", int(response["ContentLength"]))
        body = response["Body"]
        with staging.atomic_output(local) as out:
            writer = HashingWriter(out, progress=progress)
            for chunk in body.iter_chunks(staging.CHUNK):
                writer.write(chunk)
        progress.summary(writer.count, writer.count)
        return writer.staged(local.name, progress.seconds)

    def exists(self, key: str) -> bool:
        """HEAD the key."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise StorageError(f"check {self.describe(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"check {self.describe(key)}: {exc}") from None
        return True

    def delete(self, key: str) -> None:
        """DELETE the key (in a versioned bucket this adds a delete marker)."""
        self._call(
            f"delete {self.describe(key)}",
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self._key(key),
        )

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """List every object below the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        strip = f"{self.prefix}/" if self.prefix else ""
        pages = self._call(
            f"list {self.describe(prefix)}",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)),
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredObject(
                    item["Key"][len(strip) :], int(item["Size"]), item.get("LastModified")
                )

    def _head(self, key: str, **kwargs: Any) -> dict[str, Any] | None:
        """HEAD a key; None when it does not exist (404), StorageError for anything else."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self._key(key), **kwargs
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageError(f"check {self.describe(key)}: S3 error {code}") from None
        except BotoCoreError as exc:
            raise StorageError(f"check {self.describe(key)}: {exc}") from None
        return head

    def holds(self, key: str, staged: StagedFile) -> bool:
        """Size and the store's own ChecksumSHA256 from a HEAD; the bytes only if it has none."""
        head = self._head(key, ChecksumMode="ENABLED")
        if head is None or int(head["ContentLength"]) != staged.bytes:
            return False
        stored = head.get("ChecksumSHA256")
        chunk = self.cfg.multipart_chunksize
        if stored and staged.bytes < chunk:  # one PUT: the plain sha256, base64
            return bool(stored == base64.b64encode(bytes.fromhex(staged.sha256)).decode())
        if stored and staged.composite_sha256 and staged.part_size == chunk:
            return same_checksum(stored, staged.composite_sha256)
        return super().holds(key, staged)

    def _stream_sha256(self, key: str) -> tuple[int, str]:
        response = self._call(
            f"read {self.describe(key)}",
            self.client.get_object,
            Bucket=self.bucket,
            Key=self._key(key),
        )
        sha, size = hashlib.sha256(), 0
        for chunk in response["Body"].iter_chunks(staging.CHUNK):
            sha.update(chunk)
            size += len(chunk)
        return size, sha.hexdigest()

    def locked_until(self, key: str) -> datetime | None:
        """The retain-until date S3 reports for the current version (None: gone, or unlocked)."""
        head = self._head(key)
        if head is None:
            return None
        until = head.get("ObjectLockRetainUntilDate")
        legal_hold = head.get("ObjectLockLegalHoldStatus") == "ON"
        if legal_hold:
            return datetime.max.replace(tzinfo=UTC)
        return until if isinstance(until, datetime) else None

    def abort_stale_uploads(self, prefix: str, older_than: datetime) -> builtins.list[str]:
        """Abort incomplete multipart uploads below the prefix started before ``older_than``."""
        aborted: builtins.list[str] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self._call(
            f"list uploads {self.describe(prefix)}",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))),
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    self._call(
                        f"abort upload {upload['Key']}",
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    aborted.append(upload["Key"])
        return aborted

    def check_writable(self, key: str) -> None:
        """The bucket answers and accepts a small fixed object (overwritten each time)."""
        self._call(f"reach bucket {self.bucket}", self.client.head_bucket, Bucket=self.bucket)
        self.put_bytes(key, b"pg_backup preflight\n")

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """GET a small object and its ETag."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(response["Body"].read()), str(response["ETag"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise StorageError(f"read {self.describe(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"read {self.describe(key)}: {exc}") from None

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """PUT with ``If-Match: <ETag>`` (or ``If-None-Match: *``): S3's conditional write."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                **self._extra_args(None),
                **condition,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
                return False
            if code != "NotImplemented":
                raise StorageError(f"upload {self.describe(key)}: S3 error {code}") from None
            # A store without conditional writes: last writer wins until the next rebuild.
            log.warning("%s: the store has no conditional writes; writing anyway", self.url)
            self.put_bytes(key, data)
        except BotoCoreError as exc:
            raise StorageError(f"upload {self.describe(key)}: {exc}") from None
        return True


def open_storage(cfg: StorageConfig, *, for_delete: bool = False) -> Storage:
    """The backend for a storage URL (the S3 client is created on first use)."""
    if cfg.url.startswith("s3://"):
        conn_id = (cfg.sweep_aws_conn_id if for_delete else None) or cfg.aws_conn_id
        return S3Storage(cfg.url, cfg, conn_id)
    return FileStorage(cfg.url)


def retain_until(cfg: StorageConfig, taken_at: str) -> datetime | None:
    """Object Lock date of a set, derived from the run's time so a retry asks for the same date."""
    if not cfg.object_lock:
        return None
    start = datetime.fromisoformat(taken_at)
    return start + timedelta(days=cfg.object_lock.days)
