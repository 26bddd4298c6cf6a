"""The scratch database is made from preflight's reading of the source, beside the dump.

Real stages on a real source; the other locale (SQL_ASCII, C) is one no source here has, so a
database left in it shows.
"""

from __future__ import annotations

from typing import Any

from pg_backup.stages.runtime import Runtime
from tests.conftest import psql

LOCALE_SQL = "SELECT datcollate || ' ' || datctype FROM pg_database WHERE datname = '{}'"


def test_preflight_reads_the_locale_the_dump_records_and_the_restore_keeps_the_database(
    harness_factory: Any,
) -> None:
    """preflight's locale is the dump's, so the restore uses the database made beside the dump."""
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.preflight import run_preflight
    from pg_backup.stages.restore import create_scratch_db, drop_scratch_db, restore_staged
    from pg_backup.stages.verify import verify_restore

    h = harness_factory("file")
    cfg = h.write_config()
    run = h.run_info()
    checked = run_preflight(Runtime(cfg, run))
    database = create_scratch_db(Runtime(cfg, run), checked.locale)
    oid = psql(f"SELECT oid FROM pg_database WHERE datname = '{database}'")
    try:
        dumped = run_dump(Runtime(cfg, run))
        assert checked.locale is not None and checked.locale == dumped.database
        restored = restore_staged(Runtime(cfg, run), dumped, database, made_in=checked.locale)
        # the very database made beside the dump, not a second one
        assert psql(f"SELECT oid FROM pg_database WHERE datname = '{database}'") == oid
        assert verify_restore(Runtime(cfg, run), dumped, restored).status == "verified"
    finally:
        drop_scratch_db(Runtime(cfg, run))


def test_a_database_made_in_another_locale_is_made_again_in_the_dumps(
    harness_factory: Any,
) -> None:
    """A run from before preflight recorded the locale, or a source made again in between."""
    from pg_backup.core.dbprops import DatabaseLocale
    from pg_backup.stages.dump import run_dump
    from pg_backup.stages.restore import create_scratch_db, drop_scratch_db, restore_staged

    h = harness_factory("file")
    cfg = h.write_config()
    run = h.run_info()
    dumped = run_dump(Runtime(cfg, run))
    source = psql(LOCALE_SQL.format(h.source_db))
    other = DatabaseLocale(encoding="SQL_ASCII", collate="C", ctype="C")
    assert dumped.database is not None and dumped.database != other
    for made_in in (other, None):
        database = create_scratch_db(Runtime(cfg, run), made_in)
        try:
            restore_staged(Runtime(cfg, run), dumped, database, made_in=made_in)
            assert psql(LOCALE_SQL.format(database)) == source
            encoding = f"SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '{database}'"
            assert psql(encoding) == dumped.database.encoding
        finally:
            drop_scratch_db(Runtime(cfg, run))
