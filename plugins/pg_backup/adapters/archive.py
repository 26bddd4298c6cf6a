"""The archive format of parallel dumps: pg_dump's directory format packed as one tar file.

With ``dump.jobs`` > 1, ``pg_dump --format=directory --jobs=N`` writes a directory; it is packed
into ``db.dump`` as one uncompressed POSIX tar (hashed in the pass that writes it), so the later
stages still hand over a single file. The stock restore is ``tar -x`` and ``pg_restore -j N`` on
``db.dump.d``. Unpacking accepts only what pg_dump writes: plain files one level deep.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from pg_backup.adapters import staging
from pg_backup.adapters.staging import HashingReader, HashingWriter, Progress
from pg_backup.core.errors import RestoreError, StagedFileError
from pg_backup.core.layout import DUMP_DIR
from pg_backup.core.names import DumpFormat
from pg_backup.core.records import StagedFile

log = logging.getLogger(__name__)


class _Positioned:
    """A HashingWriter with the ``tell`` tarfile asks for (bytes written so far)."""

    def __init__(self, writer: HashingWriter):
        self.write = writer.write
        self._writer = writer

    def tell(self) -> int:
        return self._writer.count


def _member(tar: Any, path: Path, arcname: str, mode: int) -> Any:
    info = tar.gettarinfo(str(path), arcname)
    info.mode, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, "", ""
    return info


def pack_directory(tree: Path, out: Path, seconds: float) -> StagedFile:
    """Pack pg_dump's directory into ``out`` as an uncompressed tar, hashed in the same pass.

    Members are ``db.dump.d/toc.dat`` first, then the data files by name, owned by nobody in
    particular: the same directory packs to the same bytes apart from file times. The directory
    is removed afterwards; ``seconds`` (time already spent dumping) is added to the record's.
    """
    started = time.monotonic()
    names = sorted(os.listdir(tree), key=lambda name: (name != "toc.dat", name))
    with staging.atomic_output(out) as handle:
        writer = HashingWriter(handle)
        with tarfile.TarFile(
            fileobj=_Positioned(writer),  # type: ignore[arg-type]
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=staging.CHUNK,
        ) as tar:
            tar.addfile(_member(tar, tree, DUMP_DIR, 0o700))
            for name in names:
                path = tree / name
                info = _member(tar, path, f"{DUMP_DIR}/{name}", 0o600)
                if not info.isfile():
                    raise StagedFileError(f"pg_dump left {path}, which is not a regular file")
                with path.open("rb") as data:
                    tar.addfile(info, data)
    staging.remove_dir(tree)
    seconds += time.monotonic() - started
    log.info("dump: packed %d files of %s into %s", len(names), tree.name, out.name)
    return writer.staged(out.name, seconds)


def dump_format_of(path: Path) -> DumpFormat:
    """What kind of dump ``path`` holds: a directory or a tar of one, else a custom-format file."""
    if path.is_dir():
        return "directory"
    with path.open("rb") as handle:
        head = handle.read(512)
    # A custom-format file starts with "PGDMP"; a POSIX tar has "ustar" at offset 257.
    return "directory" if head[257:262] == b"ustar" else "custom"


def unpack_dump(src: Path, dest: Path, expected: StagedFile | None = None) -> Path:
    """Unpack a packed directory-format dump into the directory ``dest`` and return it.

    With ``expected``, the tar's size and sha256 are checked in the same pass, and a mismatch
    removes what was unpacked.

    :raises RestoreError: the file is not a packed pg_dump directory
    :raises StagedFileError: the file is not the one its producer recorded
    """
    staging.remove_dir(dest)  # left by an earlier attempt
    dest.mkdir(parents=True, mode=0o700)
    progress = Progress(f"unpack {src.name}", src.stat().st_size)
    try:
        with src.open("rb") as raw:
            reader = HashingReader(raw, progress)
            try:
                _extract(reader, dest)
            except (tarfile.TarError, RestoreError) as exc:
                # Damaged bytes: say so if the hash proves it, else the tar itself is wrong.
                while reader.read(staging.CHUNK):
                    pass
                if expected is not None:
                    reader.check(src, expected)
                raise RestoreError(f"{src} is not a packed pg_dump directory: {exc}") from None
            while reader.read(staging.CHUNK):  # the tar's end padding: hashed like the rest
                pass
            if expected is not None:
                reader.check(src, expected)
        if not (dest / "toc.dat").is_file():
            raise RestoreError(f"{src} holds no toc.dat: it is not a packed pg_dump directory")
    except BaseException:
        staging.remove_dir(dest)
        raise
    progress.summary(reader.count, reader.count)
    return dest


def _extract(reader: HashingReader, dest: Path) -> None:
    """Stream the tar's plain files into ``dest`` (no links, no paths that leave it)."""
    stream = tarfile.open(fileobj=reader, mode="r|", bufsize=staging.CHUNK)  # type: ignore[call-overload]
    with stream as tar:
        for member in tar:
            _, _, name = member.name.partition("/")
            if member.isdir() and not name:
                continue
            if not member.isfile() or not name or "/" in name or name in {".", ".."}:
                raise RestoreError(f"unexpected member {member.name!r}")
            data = tar.extractfile(member)
            with data, (dest / name).open("wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(data, out, staging.CHUNK)
