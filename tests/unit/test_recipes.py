"""The restore commands the Backups page offers for copying."""

from __future__ import annotations

from pg_backup.core.recipes import restore_commands

SHA = "ab" * 32


def test_s3_custom_format_recipe():
    """aws s3 cp, sha256 check, age | zstd, createdb, pg_restore -j; the CLI names the set."""
    got = restore_commands(
        "voting", "voting_20261130T020000Z_scheduled", "s3://b/p/voting/2026/11/30/x/", SHA
    )
    assert got["cli"] == (
        "pg-backup restore voting voting_20261130T020000Z_scheduled --into dbname=restored_voting"
    )
    assert got["stock"].splitlines() == [
        "aws s3 cp s3://b/p/voting/2026/11/30/x/db.dump.zst.age .",
        f"echo '{SHA}  db.dump.zst.age' | sha256sum -c -",
        "age -d -i key.txt db.dump.zst.age | zstd -d -q -o db.dump",
        "createdb restored_voting",
        "pg_restore --no-owner --no-privileges -j 4 -d restored_voting db.dump",
    ]


def test_directory_format_and_quoted_paths():
    """A parallel dump untars db.dump.d; a path with spaces is shell-quoted."""
    got = restore_commands("voting", "b", "file:///srv/my backups/voting/x/", None, "directory")
    lines = got["stock"].splitlines()
    assert lines[0] == "cp '/srv/my backups/voting/x/db.dump.zst.age' ."
    assert "sha256sum" not in got["stock"]
    assert lines[1] == "age -d -i key.txt db.dump.zst.age | zstd -d -q | tar -x"
    assert lines[-1].endswith(" db.dump.d")
