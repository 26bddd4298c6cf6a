"""One hundred targets: the DAG file parses into 400 DAGs offline, with pools shared per server.

The parse time is measured by ``tests/benchmarks/parse_many.py`` (docs/bench-parse-2026-11-30.md);
this test holds the part that must never regress: no connection lookup, query or network call,
whatever the number of targets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.benchmarks.parse_many import many_targets
from tests.dags.test_dag_integrity import offline, parse_dags_folder

__all__ = ["offline"]  # the fixture, imported to be used here

TARGETS = 100


@pytest.fixture
def hundred_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from pyrage import x25519

    recipient = str(x25519.Identity.generate().to_public())
    path = tmp_path / "pg_backup.yaml"
    path.write_text(yaml.safe_dump(many_targets(TARGETS, tmp_path, recipient)))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(path))
    return path


def test_hundred_targets_parse_offline_into_400_dags(
    hundred_targets: Path, offline: list[str]
) -> None:
    """With every lookup, connect and SQL query forbidden, 100 targets give 400 DAGs and no error."""
    assert os.environ["PG_BACKUP_CONFIG"] == str(hundred_targets)
    bag = parse_dags_folder()
    assert bag.import_errors == {}
    assert len(bag.dag_ids) == 4 * TARGETS
    assert offline == []
    pools: dict[str, set[Any]] = {}
    for dag_id, dag in bag.dags.items():
        if dag_id.startswith("pg_backup_"):
            pools.setdefault("dump", set()).add(dag.get_task("dump").pool)
            pools.setdefault("restore", set()).add(dag.get_task("restore").pool)
    # Four source servers among the hundred targets, one scratch server: five pools in all.
    assert pools["dump"] == {f"pg_backup_source_pg{i}_example_org_5432" for i in range(4)}
    assert pools["restore"] == {"pg_backup_scratch_pg_backup_scratch"}
