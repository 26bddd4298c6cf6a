"""Tests for pg_backup.core.names and the budget lookup that relies on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pg_backup.budgets import over_budget, target_of
from pg_backup.core.config import Budgets, Timeouts, parse_config
from pg_backup.core.names import KINDS, Stage, backup_dag_id, backup_dag_targets


def config(*names: str):
    from pyrage import x25519

    key = str(x25519.Identity.generate().to_public())
    target = {
        "source_conn_id": "src",
        "scratch_conn_id": "scr",
        "storage": {"url": "file:///srv/b"},
        "encryption": {"recipients": [key]},
    }
    return parse_config({"targets": {n: dict(target) for n in names}})


def test_every_stage_has_a_budget_and_a_timeout():
    """Budgets and timeouts are keyed by the stage names: a new stage cannot lack either."""
    for stage in Stage:
        assert stage.value in Budgets.model_fields, stage
        assert stage.value in Timeouts.model_fields, stage
        assert Budgets().of(stage) < getattr(Timeouts(), stage.value)


def test_budget_lookup_finds_the_target_of_every_backup_dag():
    """Both backup DAGs of each target map to it, even a target named like 'emergency_x'."""
    cfg = config("voting", "emergency_x", "y")
    for name in cfg.targets:
        for kind in KINDS:
            found = target_of(backup_dag_id(name, kind), cfg)
            assert found is not None and found.name == name
    assert target_of("pg_restore_drill_voting", cfg) is None
    assert target_of("pg_backup_nosuch", cfg) is None
    assert len(backup_dag_targets(cfg.targets)) == 2 * len(cfg.targets)


@pytest.mark.parametrize("stage", list(Stage))
def test_over_budget_knows_every_stage_by_its_task_id(stage: Stage):
    """A stage's task id (its name) finds its budget; other task ids have none."""
    cfg = config("voting").targets["voting"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    budget = cfg.budgets.of(stage)
    assert over_budget(cfg, stage.value, start, start + budget - timedelta(seconds=1)) is None
    late = over_budget(cfg, stage.value, start, start + budget + timedelta(seconds=1))
    assert late is not None and late[0] == stage.value and late[2] == budget
    assert over_budget(cfg, "drop_scratch_db", start, start + timedelta(days=9)) is None


def test_targets_whose_dag_ids_collide_are_refused():
    """'x' and 'emergency_x' would share pg_backup_emergency_x: the config names both."""
    from pg_backup.core.errors import ConfigError

    with pytest.raises(ConfigError, match="pg_backup_emergency_x is also a DAG of target 'x'"):
        config("x", "emergency_x")
