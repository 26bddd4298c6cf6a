"""The encrypt stage: age to the configured public keys, the data object and the table list.

The daily pipeline holds public keys only; private keys are read by drills and restores.
"""

from __future__ import annotations

from pg_backup.adapters.streams import encrypt_staged
from pg_backup.core.layout import ENCRYPTED_FILE, ENCRYPTED_GLOBALS_FILE, ENCRYPTED_TABLES_FILE
from pg_backup.core.records import EncryptResult, StagedFile
from pg_backup.stages.runtime import Runtime


def encrypt_set(
    rt: Runtime, compressed: StagedFile, tables: StagedFile, roles: StagedFile | None = None
) -> EncryptResult:
    """Encrypt the compressed dump (hashed per upload part too), tables and roles documents.

    ``roles`` is the psql script of roles and settings (``globals.sql``); runs started by an
    earlier release have none.
    """
    staged = rt.staging
    data = encrypt_staged(
        staged,
        compressed,
        ENCRYPTED_FILE,
        rt.recipients,
        part_size=rt.cfg.storage.multipart_chunksize,
    )
    listing = encrypt_staged(staged, tables, ENCRYPTED_TABLES_FILE, rt.recipients)
    script = None
    if roles is not None:
        script = encrypt_staged(staged, roles, ENCRYPTED_GLOBALS_FILE, rt.recipients)
    return EncryptResult(data=data, tables=listing, globals=script)
