"""The encrypt stage: age (X25519 recipients) via pyrage, streaming, hashed in the same pass.

The daily pipeline holds public keys only; private keys (identities) are read by drills and
restores from an Airflow connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pg_backup import staging
from pg_backup.layout import ENCRYPTED_FILE, ENCRYPTED_TABLES_FILE
from pg_backup.staging import HashingReader, HashingWriter, Progress, StagedFile

if TYPE_CHECKING:
    from pg_backup.config import TargetConfig
    from pg_backup.layout import RunInfo


class KeyFormatError(ValueError):
    """A recipient or identity does not parse; the message names the field."""


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_checksum_ok(hrp: str, data: str) -> bool:
    chk = 1
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    for value in values + [_BECH32.index(c) for c in data]:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GEN):
            chk ^= gen if (top >> i) & 1 else 0
    return chk == 1


def check_recipient(value: str, field: str = "recipient") -> str:
    """Check an ``age1...`` public key in pure Python (no pyrage): safe at DAG parse time."""
    text = value.strip() if isinstance(value, str) else ""
    if text.upper().startswith("AGE-SECRET-KEY-"):
        raise KeyFormatError(
            f"{field}: this is a private key; put the public key (age1...) here and keep the "
            "private key in the identity connection"
        )
    hrp, _, data = text.lower().rpartition("1")
    if (
        text in (text.lower(), text.upper())
        and hrp == "age"
        and len(data) == 58  # 32 bytes as 5-bit groups + 6 checksum characters
        and all(c in _BECH32 for c in data)
        and _bech32_checksum_ok(hrp, data)
    ):
        return text
    shown = text if len(text) <= 20 else text[:12] + "..." + text[-4:]
    raise KeyFormatError(
        f"{field}: {shown!r} is not an age X25519 public key; it looks like age1... "
        "(62 characters); generate a pair with `pg-backup keygen` or `age-keygen`"
    )


def parse_recipient(value: str, field: str = "recipient") -> Any:
    """Parse an ``age1...`` public key, or raise naming the field and the fix."""
    from pyrage import x25519

    text = (value or "").strip()
    if text.startswith("AGE-SECRET-KEY-"):
        raise KeyFormatError(
            f"{field}: this is a private key; put the public key (age1...) here and keep the "
            "private key in the identity connection"
        )
    try:
        return x25519.Recipient.from_str(text)
    except Exception as exc:
        shown = text if len(text) <= 20 else text[:12] + "..." + text[-4:]
        raise KeyFormatError(
            f"{field}: {shown!r} is not an age X25519 public key ({exc}); it looks like "
            "age1... (62 characters); generate a pair with `pg-backup keygen` or `age-keygen`"
        ) from None


def parse_identity(value: str, field: str = "identity") -> Any:
    """Parse an ``AGE-SECRET-KEY-1...`` private key; the error never echoes the key."""
    from pyrage import x25519

    try:
        return x25519.Identity.from_str((value or "").strip())
    except Exception:
        raise KeyFormatError(
            f"{field}: not an age X25519 private key (expected AGE-SECRET-KEY-1...)"
        ) from None


def encrypt_file(
    src: Path,
    expected: StagedFile,
    dst: Path,
    recipients: list[str],
    part_size: int | None = None,
) -> StagedFile:
    """Encrypt ``src`` to every recipient into ``dst``; the output decrypts with ``age -d``."""
    import pyrage

    keys = [parse_recipient(r, f"encryption.recipients[{i}]") for i, r in enumerate(recipients)]
    staging.check_present(src, expected)
    progress = Progress(f"encrypt {src.name}", expected.bytes)
    with src.open("rb") as raw, staging.atomic_output(dst) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out, part_size=part_size)
        pyrage.encrypt_io(reader, writer, keys)
        reader.check(src, expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(dst.name, progress.seconds)


def decrypt_file(src: Path, expected: StagedFile, dst: Path, identities: list[str]) -> StagedFile:
    """Decrypt ``src`` with any of the identities into ``dst``."""
    import pyrage

    keys = [parse_identity(v, f"identity[{i}]") for i, v in enumerate(identities)]
    staging.check_present(src, expected)
    progress = Progress(f"decrypt {src.name}", expected.bytes)
    with src.open("rb") as raw, staging.atomic_output(dst) as out:
        reader = HashingReader(raw, progress)
        writer = HashingWriter(out)
        pyrage.decrypt_io(reader, writer, keys)
        reader.check(src, expected)
    progress.summary(reader.count, writer.count)
    return writer.staged(dst.name, progress.seconds)


def encrypt_set(
    cfg: TargetConfig, run: RunInfo, compressed: StagedFile, tables: StagedFile
) -> tuple[StagedFile, StagedFile]:
    """The encrypt stage of one run: data object (hashed per upload part too) and table list."""
    recipients = list(cfg.encryption.recipients)
    data = encrypt_file(
        run.staging_path / compressed.name,
        compressed,
        run.staging_path / ENCRYPTED_FILE,
        recipients,
        part_size=cfg.storage.multipart_chunksize,
    )
    listing = encrypt_file(
        run.staging_path / tables.name, tables, run.staging_path / ENCRYPTED_TABLES_FILE, recipients
    )
    return data, listing
