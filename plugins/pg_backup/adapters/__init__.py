"""Wrappers of the outside world: pg_dump/pg_restore, PostgreSQL, storage, staging files, mail.

Imports ``core`` only; knows nothing of stages or DAGs.
"""
