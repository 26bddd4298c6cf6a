"""The restore commands the Backups page offers for copying."""

from __future__ import annotations

import re
from pathlib import Path

from pg_backup.core.recipes import restore_commands

SHA = "ab" * 32
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- marker: ... -->`` in README.md."""
    found = re.search(rf"<!-- {marker}:[^>]*-->\s*```sh\n(.*?)```", README.read_text(), re.DOTALL)
    assert found, marker
    return found.group(1).rstrip("\n")


def test_recipe_of_a_set_with_locale_and_roles_is_the_readme_block():
    """The page's stock recipe is README's: whole set, hash, locale CREATE DATABASE, globals, owners."""
    got = restore_commands(
        "voting",
        "voting_20261130T020000Z_scheduled",
        "s3://b/p/voting/2026/11/30/x/",
        SHA,
        as_it_was=True,
    )
    assert got["cli"] == (
        "pg-backup restore voting voting_20261130T020000Z_scheduled "
        "--into dbname=restored_voting --roles"
    )
    lines = got["stock"].splitlines()
    assert lines[:2] == [
        "aws s3 cp --recursive s3://b/p/voting/2026/11/30/x/ .",
        f"echo '{SHA}  db.dump.zst.age' | sha256sum -c -",
    ]
    assert "\n".join(lines[2:]) == _readme_block("stock-restore")
    assert "--no-owner" not in got["stock"]


def test_recipe_of_an_older_set_restores_rows_only_as_readme_says():
    """Sets without the locale and globals.sql.age: data object only, template0, no owners."""
    got = restore_commands(
        "voting", "voting_20261130T020000Z_scheduled", "s3://b/p/voting/2026/11/30/x/", SHA
    )
    assert got["cli"] == (
        "pg-backup restore voting voting_20261130T020000Z_scheduled --into dbname=restored_voting"
    )
    assert got["stock"].splitlines() == [
        "aws s3 cp s3://b/p/voting/2026/11/30/x/db.dump.zst.age .",
        f"echo '{SHA}  db.dump.zst.age' | sha256sum -c -",
        "age -d -i key.txt db.dump.zst.age | zstd -d -q -f -o db.dump",
        "createdb -T template0 restored_voting",
        "pg_restore --no-owner --no-privileges -j 4 -d restored_voting db.dump",
    ]
    text = README.read_text()
    assert "`createdb -T template0 restored_voting`" in text
    assert "`pg_restore --no-owner --no-privileges -j 4 -d\nrestored_voting db.dump`" in text


def test_directory_format_and_quoted_paths():
    """A parallel dump untars db.dump.d; a path with spaces is shell-quoted."""
    got = restore_commands(
        "voting", "b", "file:///srv/my backups/voting/x/", None, "directory", as_it_was=True
    )
    lines = got["stock"].splitlines()
    assert lines[0] == "cp '/srv/my backups/voting/x/'* ."
    assert "sha256sum" not in got["stock"]
    assert lines[1] == "age -d -i key.txt db.dump.zst.age | zstd -d -q | tar -x"
    assert lines[-1] == "pg_restore -j 4 -d restored_voting db.dump.d"
    old = restore_commands("voting", "b", "file:///srv/my backups/voting/x/", None, "directory")
    assert old["stock"].splitlines()[0] == "cp '/srv/my backups/voting/x/db.dump.zst.age' ."
