"""Tests for pg_backup.core.pools: pool names from the config, shared servers, size conflicts."""

from __future__ import annotations

from typing import Any

import pytest
from pyrage import x25519

from pg_backup.core.config import parse_config
from pg_backup.core.errors import ConfigError
from pg_backup.core.pools import drill_pool, plan_pools, pool_name, scratch_pool, source_pool

RECIPIENT = str(x25519.Identity.generate().to_public())


def config(targets: dict[str, Any], **defaults: Any) -> Any:
    return parse_config(
        {
            "defaults": {
                "scratch_conn_id": "pg_scratch",
                "storage": {"url": "file:///srv/pg_backup"},
                "encryption": {"recipients": [RECIPIENT]},
                **defaults,
            },
            "targets": targets,
        }
    )


def test_pool_name_is_airflow_safe_and_derived_from_the_server_label() -> None:
    """host:port labels become pg_backup_<role>_<host>_<port>."""
    assert pool_name("source", "DB1.example.org:5432") == "pg_backup_source_db1_example_org_5432"
    assert pool_name("scratch", "--") == "pg_backup_scratch_default"


def test_pools_default_to_the_connection_ids() -> None:
    """Without server labels, each connection is its own server."""
    cfg = config({"voting": {"source_conn_id": "voting_db"}}).target("voting")
    assert source_pool(cfg) == "pg_backup_source_voting_db"
    assert scratch_pool(cfg) == "pg_backup_scratch_pg_scratch"


def test_targets_on_one_server_share_its_pool() -> None:
    """Forty databases on one server label it once: one source pool, one scratch pool."""
    targets = {f"db{i}": {"source_conn_id": f"db{i}_conn"} for i in range(40)}
    found = config(
        targets, pools={"source_server": "db1.example.org:5432", "source_slots": 2}
    ).targets
    specs = plan_pools(found.values())
    assert [(s.name, s.slots, len(s.targets)) for s in specs] == [
        ("pg_backup_scratch_pg_scratch", 2, 40),
        ("pg_backup_source_db1_example_org_5432", 2, 40),
    ]


def test_drill_restores_wait_in_the_scratch_pool_or_their_standby_s() -> None:
    """Without a standby the drill shares the scratch pool; a standby server has a pool of its own."""
    found = config(
        {
            "a": {"source_conn_id": "a_db"},
            "b": {"source_conn_id": "b_db", "drill": {"standby_conn_id": "standby"}},
        }
    ).targets
    assert drill_pool(found["a"]) == scratch_pool(found["a"])
    assert drill_pool(found["b"]) == "pg_backup_scratch_standby"
    specs = {s.name: s.targets for s in plan_pools(found.values())}
    assert specs["pg_backup_scratch_pg_scratch"] == ("a", "b")
    assert specs["pg_backup_scratch_standby"] == ("b",)


def test_targets_sharing_a_pool_must_agree_on_its_size() -> None:
    """Different slots for one pool name both targets, the field and the fix."""
    found = config(
        {
            "a": {"source_conn_id": "a_db", "pools": {"source_slots": 1}},
            "b": {"source_conn_id": "b_db", "pools": {"source_slots": 3}},
        },
        pools={"source_server": "db1:5432"},
    ).targets
    with pytest.raises(ConfigError) as caught:
        plan_pools(found.values())
    message = str(caught.value)
    assert "targets.b.pools.source_slots is 3" in message
    assert "'a'" in message and "defaults.pools" in message


def test_pool_sizes_are_validated_with_the_field_named() -> None:
    """A pool of 0 slots is refused at config load."""
    with pytest.raises(ConfigError, match="pools.scratch_slots"):
        config({"a": {"source_conn_id": "a_db"}}, pools={"scratch_slots": 0})
