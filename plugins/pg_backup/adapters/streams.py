"""zstd and age over staged files: one streaming pass per file, input checked, output hashed.

compress (zstd over all cores) and encrypt (age to X25519 recipients, through pyrage) run in the
daily pipeline; decrypt and decompress bring a set back. Outputs decompress and decrypt with the
stock ``zstd -d`` and ``age -d``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from pg_backup.adapters import staging
from pg_backup.adapters.run_staging import RunStaging
from pg_backup.adapters.staging import HashingReader, HashingWriter, Progress
from pg_backup.core.errors import WrongKey
from pg_backup.core.records import StagedFile

READ_SIZE = 4 * 1024 * 1024

Transform = Callable[[HashingReader, HashingWriter], None]


def _io(stream: HashingReader | HashingWriter) -> IO[bytes]:
    """The hashing wrappers have the read/write calls the libraries use; tell the type checker."""
    return cast("IO[bytes]", stream)


def _transform(
    label: str,
    src: Path,
    expected: StagedFile,
    dst: Path,
    transform: Transform,
    part_size: int | None = None,
) -> StagedFile:
    """Stream ``src`` through ``transform`` into ``dst`` (atomically), hashing both sides."""
    staging.check_present(src, expected)
    progress = Progress(label, expected.bytes)
    with src.open("rb") as raw, staging.atomic_output(dst) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out, part_size=part_size)
        transform(reader, writer)
        # Checked before the rename: a changed input never becomes a finished output.
        reader.check(src, expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(dst.name, progress.seconds)


def _staged_transform(
    label: str,
    store: RunStaging,
    expected: StagedFile,
    name: str,
    transform: Transform,
    part_size: int | None = None,
) -> StagedFile:
    """Stream staged ``expected`` through ``transform`` into staged ``name``, hashing both sides."""
    progress = Progress(label, expected.bytes)
    with store.reader(expected) as raw, store.writer(name) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out, part_size=part_size)
        transform(reader, writer)
        # Checked before the output is made visible: a changed input never becomes an output.
        reader.check(store.describe(expected.name), expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(name, progress.seconds)


def _zstd_compress(level: int, threads: int, size: int) -> Transform:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, threads=threads or -1, write_checksum=True)

    def run(reader: HashingReader, writer: HashingWriter) -> None:
        cctx.copy_stream(
            _io(reader), _io(writer), size=size, read_size=READ_SIZE, write_size=READ_SIZE
        )

    return run


def _age_encrypt(recipients: list[Any]) -> Transform:
    import pyrage

    def run(reader: HashingReader, writer: HashingWriter) -> None:
        pyrage.encrypt_io(reader, writer, recipients)

    return run


def compress_staged(
    store: RunStaging, expected: StagedFile, name: str, level: int = 3, threads: int = 0
) -> StagedFile:
    """compress_file between staged files (a directory or an object store)."""
    return _staged_transform(
        "compress", store, expected, name, _zstd_compress(level, threads, expected.bytes)
    )


def encrypt_staged(
    store: RunStaging,
    expected: StagedFile,
    name: str,
    recipients: list[Any],
    part_size: int | None = None,
) -> StagedFile:
    """encrypt_file between staged files (a directory or an object store)."""
    return _staged_transform(
        f"encrypt {expected.name}", store, expected, name, _age_encrypt(recipients), part_size
    )


def compress_file(
    src: Path, expected: StagedFile, dst: Path, level: int = 3, threads: int = 0
) -> StagedFile:
    """Compress ``src`` into ``dst`` as one zstd frame with its checksum (threads 0: all cores)."""
    return _transform(
        "compress", src, expected, dst, _zstd_compress(level, threads, expected.bytes)
    )


def decompress_file(src: Path, expected: StagedFile, dst: Path) -> StagedFile:
    """Inverse of compress_file, with the same checks."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()

    def run(reader: HashingReader, writer: HashingWriter) -> None:
        dctx.copy_stream(_io(reader), _io(writer), read_size=READ_SIZE, write_size=READ_SIZE)

    return _transform("decompress", src, expected, dst, run)


def encrypt_file(
    src: Path, expected: StagedFile, dst: Path, recipients: list[Any], part_size: int | None = None
) -> StagedFile:
    """Encrypt ``src`` to every recipient (pyrage keys, see ``core.keys``) into ``dst``.

    :param part_size: also hash the output per part of this many bytes (S3 multipart checksum)
    """
    return _transform(
        f"encrypt {src.name}", src, expected, dst, _age_encrypt(recipients), part_size
    )


def decrypt_file(src: Path, expected: StagedFile, dst: Path, identities: list[Any]) -> StagedFile:
    """Decrypt ``src`` with any of the identities (pyrage keys) into ``dst``.

    :raises WrongKey: no identity decrypts it
    """
    import pyrage

    def run(reader: HashingReader, writer: HashingWriter) -> None:
        try:
            pyrage.decrypt_io(reader, writer, identities)
        except pyrage.DecryptError as exc:
            raise WrongKey(f"{src.name}: {exc}") from None

    return _transform(f"decrypt {src.name}", src, expected, dst, run)
