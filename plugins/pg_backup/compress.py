"""The compress stage: zstd over all cores, streaming; input checked, output hashed, one pass."""

from __future__ import annotations

from pathlib import Path
from typing import IO, cast

from pg_backup import staging
from pg_backup.config import TargetConfig
from pg_backup.layout import COMPRESSED_FILE, RunInfo
from pg_backup.staging import HashingReader, HashingWriter, Progress, StagedFile

READ_SIZE = 4 * 1024 * 1024


def _io(stream: HashingReader | HashingWriter) -> IO[bytes]:
    """The hashing wrappers have the read/write zstandard calls; say so to the type checker."""
    return cast("IO[bytes]", stream)


def compress_file(
    src: Path, expected: StagedFile, dst: Path, level: int = 3, threads: int = 0
) -> StagedFile:
    """Compress ``src`` into ``dst`` (zstd frame the stock ``zstd -d`` reads)."""
    import zstandard

    staging.check_present(src, expected)
    progress = Progress("compress", expected.bytes)
    cctx = zstandard.ZstdCompressor(level=level, threads=threads or -1, write_checksum=True)
    with src.open("rb") as raw, staging.atomic_output(dst) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out)
        cctx.copy_stream(
            _io(reader),
            _io(writer),
            size=expected.bytes,
            read_size=READ_SIZE,
            write_size=READ_SIZE,
        )
        # Checked before the rename: a changed input never becomes a finished output.
        reader.check(src, expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(dst.name, progress.seconds)


def decompress_file(src: Path, expected: StagedFile, dst: Path) -> StagedFile:
    """Inverse of compress_file, with the same checks."""
    import zstandard

    staging.check_present(src, expected)
    progress = Progress("decompress", expected.bytes)
    dctx = zstandard.ZstdDecompressor()
    with src.open("rb") as raw, staging.atomic_output(dst) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out)
        dctx.copy_stream(_io(reader), _io(writer), read_size=READ_SIZE, write_size=READ_SIZE)
        reader.check(src, expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(dst.name, progress.seconds)


def compress_dump(cfg: TargetConfig, run: RunInfo, dump: StagedFile) -> StagedFile:
    """The compress stage of one run: the staged dump into ``db.dump.zst``."""
    return compress_file(
        run.staging_path / dump.name,
        dump,
        run.staging_path / COMPRESSED_FILE,
        level=cfg.compress.level,
        threads=cfg.compress.threads,
    )
