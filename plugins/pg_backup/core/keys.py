"""age keys: public keys (recipients) and private keys (identities), parsed in one place.

``check_recipient`` is pure Python, cheap enough for DAG parse time; the parsers that return
key objects import pyrage (bindings to the rage implementation of age) when called. No message
here ever echoes a private key.
"""

from __future__ import annotations

from typing import Any

from pg_backup.core.errors import KeyFormatError

SECRET_PREFIX = "AGE-SECRET-KEY-"

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_PRIVATE_HERE = (
    "{field}: this is a private key; put the public key (age1...) here and keep the private key "
    "in the identity connection"
)
_NOT_PUBLIC = (
    "{field}: {shown!r} is not an age X25519 public key; it looks like age1... (62 characters); "
    "generate a pair with `pg-backup keygen` or `age-keygen`"
)


def _bech32_checksum_ok(hrp: str, data: str) -> bool:
    chk = 1
    values = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    for value in values + [_BECH32.index(c) for c in data]:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GEN):
            chk ^= gen if (top >> i) & 1 else 0
    return chk == 1


def _shown(text: str) -> str:
    return text if len(text) <= 20 else text[:12] + "..." + text[-4:]


def check_recipient(value: str, field: str = "recipient") -> str:
    """Check an ``age1...`` public key in pure Python (no pyrage); return it stripped."""
    text = value.strip() if isinstance(value, str) else ""
    if text.upper().startswith(SECRET_PREFIX):
        raise KeyFormatError(_PRIVATE_HERE.format(field=field))
    hrp, _, data = text.lower().rpartition("1")
    if (
        text in (text.lower(), text.upper())
        and hrp == "age"
        and len(data) == 58  # 32 bytes as 5-bit groups + 6 checksum characters
        and all(c in _BECH32 for c in data)
        and _bech32_checksum_ok(hrp, data)
    ):
        return text
    raise KeyFormatError(_NOT_PUBLIC.format(field=field, shown=_shown(text)))


def parse_recipient(value: str, field: str = "recipient") -> Any:
    """An ``age1...`` public key as a pyrage recipient, or raise naming the field and the fix."""
    from pyrage import x25519

    text = check_recipient(value, field)
    try:
        return x25519.Recipient.from_str(text)
    except Exception:
        raise KeyFormatError(_NOT_PUBLIC.format(field=field, shown=_shown(text))) from None


def parse_recipients(values: list[str], field: str = "encryption.recipients") -> list[Any]:
    """Every configured public key, parsed (the error names the index of a bad one)."""
    return [parse_recipient(v, f"{field}[{i}]") for i, v in enumerate(values)]


def parse_identity(value: str, field: str = "identity") -> Any:
    """An ``AGE-SECRET-KEY-1...`` private key as a pyrage identity; errors never echo the key."""
    from pyrage import x25519

    try:
        return x25519.Identity.from_str((value or "").strip())
    except Exception:
        raise KeyFormatError(
            f"{field}: not an age X25519 private key (expected AGE-SECRET-KEY-1...)"
        ) from None


def split_identities(secret: str) -> list[str]:
    """Every ``AGE-SECRET-KEY-1...`` line of a connection password or a key file."""
    return [line.strip() for line in secret.splitlines() if line.strip().startswith(SECRET_PREFIX)]


def public_keys(identities: list[str]) -> list[str]:
    """The public key (``age1...``) of each private key, in order."""
    return [
        str(parse_identity(key, f"identity[{i}]").to_public()) for i, key in enumerate(identities)
    ]
