"""The restore commands of one set, as the Backups page shows them for copying.

Two recipes: the ``pg-backup`` command line (checks the hashes and proves the restore for you),
and the stock tools only (``age``, ``zstd``, ``psql``, ``pg_restore``: README "Restore by hand
with stock tools", whose block is this recipe, checked by ``tests/unit/test_recipes.py``), for the
day neither Airflow nor this package is at hand. Paths and ids are shell-quoted.
"""

from __future__ import annotations

import shlex

from pg_backup.core.layout import (
    DATA_OBJECT,
    DUMP_DIR,
    DUMP_FILE,
    GLOBALS_OBJECT,
    MANIFEST_OBJECT,
)

GLOBALS_FILE = "globals.sql"

# CREATE DATABASE in the source's encoding and locale, read from manifest.json's "database"
# (psql variables :db and :manifest): a server that lacks the locale stops here, before anything
# is created.
CREATE_DATABASE_SQL = """\
SELECT format('CREATE DATABASE %I TEMPLATE template0 ENCODING %L LC_COLLATE %L LC_CTYPE %L',
              :'db', d->>'encoding', d->>'collate', d->>'ctype')
       || CASE d->>'locale_provider'
            WHEN 'icu' THEN format(' LOCALE_PROVIDER icu ICU_LOCALE %L', d->>'provider_locale')
            WHEN 'builtin' THEN format(' LOCALE_PROVIDER builtin BUILTIN_LOCALE %L', d->>'provider_locale')
            ELSE '' END
       || coalesce(' ICU_RULES ' || quote_literal(d->>'icu_rules'), '')
FROM json_extract_path(:'manifest'::json, 'database') AS d \\gexec"""  # noqa: E501 (README's lines)


def fetch_command(location: str, whole_set: bool = True) -> str:
    """Copy the set's objects (or only its data object) into the current directory.

    :param location: the set's folder (``s3://...`` or ``file://...``)
    """
    folder = location.rstrip("/") + "/"
    if folder.startswith("s3://"):
        if whole_set:
            return f"aws s3 cp --recursive {shlex.quote(folder)} ."
        return f"aws s3 cp {shlex.quote(folder + DATA_OBJECT)} ."
    if folder.startswith("file://"):
        path = folder[len("file://") :]
        return (
            f"cp {shlex.quote(path)}* ." if whole_set else f"cp {shlex.quote(path + DATA_OBJECT)} ."
        )
    return f"# copy {folder}{'*' if whole_set else DATA_OBJECT} here"


def restore_commands(
    target: str,
    backup_id: str,
    location: str,
    data_sha256: str | None,
    dump_format: str | None = "custom",
    database: str | None = None,
    as_it_was: bool = False,
) -> dict[str, str]:
    """``{"cli": ..., "stock": ...}``: shell lines restoring the set into a new database.

    :param location: the set's folder in storage (``Storage.describe`` of its prefix)
    :param data_sha256: the manifest's hash of the data object (None: the check is left out)
    :param dump_format: the manifest's ``dump_format`` (``directory``: a tar of ``db.dump.d``)
    :param database: the database to create (default ``restored_<target>``)
    :param as_it_was: the manifest records the source's locale (``database``) and the set holds
        ``globals.sql.age``: the database is created in that locale and gets its roles, owners,
        grants and settings. False (sets made before they were recorded): rows only.
    """
    name = database or f"restored_{target}"
    db = shlex.quote(name)
    cli = f"pg-backup restore {shlex.quote(target)} {shlex.quote(backup_id)} " + (
        f"--into {shlex.quote('dbname=' + name)}" + (" --roles" if as_it_was else "")
    )
    lines = [fetch_command(location, whole_set=as_it_was)]
    if data_sha256:
        lines.append(f"echo '{data_sha256}  {DATA_OBJECT}' | sha256sum -c -")
    if dump_format == "directory":
        lines.append(f"age -d -i key.txt {DATA_OBJECT} | zstd -d -q | tar -x")
        dump = DUMP_DIR
    else:
        lines.append(f"age -d -i key.txt {DATA_OBJECT} | zstd -d -q -f -o {DUMP_FILE}")
        dump = DUMP_FILE
    if not as_it_was:
        lines += [
            f"createdb -T template0 {db}",
            f"pg_restore --no-owner --no-privileges -j 4 -d {db} {dump}",
        ]
        return {"cli": cli, "stock": "\n".join(lines)}
    psql = f"psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db={db}"
    lines += [
        f"age -d -i key.txt {GLOBALS_OBJECT} > {GLOBALS_FILE}",
        f"{psql} -v manifest=\"$(cat {MANIFEST_OBJECT})\" <<'SQL'",
        CREATE_DATABASE_SQL,
        "SQL",
        f"{psql} -f {GLOBALS_FILE}",
        f"pg_restore -j 4 -d {db} {dump}",
    ]
    return {"cli": cli, "stock": "\n".join(lines)}
