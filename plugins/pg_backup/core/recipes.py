"""The restore commands of one set, as the Backups page shows them for copying.

Two recipes: the ``pg-backup`` command line (checks the hash and the counts for you), and the
stock tools only (``age``, ``zstd``, ``pg_restore``: README "Restore by hand with stock tools"),
for the day neither Airflow nor this package is at hand. Paths and ids are shell-quoted.
"""

from __future__ import annotations

import shlex

from pg_backup.core.layout import DATA_OBJECT, DUMP_DIR, DUMP_FILE


def fetch_command(location: str) -> str:
    """Copy the set's data object into the current directory (S3 CLI or cp)."""
    source = location.rstrip("/") + "/" + DATA_OBJECT
    if source.startswith("s3://"):
        return f"aws s3 cp {shlex.quote(source)} ."
    if source.startswith("file://"):
        return f"cp {shlex.quote(source[len('file://') :])} ."
    return f"# copy {source} here"


def restore_commands(
    target: str,
    backup_id: str,
    location: str,
    data_sha256: str | None,
    dump_format: str | None = "custom",
    database: str | None = None,
) -> dict[str, str]:
    """``{"cli": ..., "stock": ...}``: shell lines restoring the set into a new database.

    :param location: the set's folder in storage (``Storage.describe`` of its prefix)
    :param data_sha256: the manifest's hash of the data object (None: the check is left out)
    :param dump_format: the manifest's ``dump_format`` (``directory``: a tar of ``db.dump.d``)
    :param database: the database to create (default ``restored_<target>``)
    """
    db = shlex.quote(database or f"restored_{target}")
    cli = (
        f"pg-backup restore {shlex.quote(target)} {shlex.quote(backup_id)} "
        f"--into {shlex.quote('dbname=' + (database or f'restored_{target}'))}"
    )
    lines = [fetch_command(location)]
    if data_sha256:
        lines.append(f"echo '{data_sha256}  {DATA_OBJECT}' | sha256sum -c -")
    if dump_format == "directory":
        lines.append(f"age -d -i key.txt {DATA_OBJECT} | zstd -d -q | tar -x")
        dump = DUMP_DIR
    else:
        lines.append(f"age -d -i key.txt {DATA_OBJECT} | zstd -d -q -o {DUMP_FILE}")
        dump = DUMP_FILE
    lines += [f"createdb {db}", f"pg_restore --no-owner --no-privileges -j 4 -d {db} {dump}"]
    return {"cli": cli, "stock": "\n".join(lines)}
