"""Airflow pools per source and per scratch server: names and sizes derived from the config.

Dump tasks run in their source server's pool, verification restores in their scratch server's
pool, one slot each: forty targets on one server then dump ``pools.source_slots`` at a time
instead of all at once. Pure: names come from config fields known at parse time (the server
label, else the connection id); ``pg-backup pools`` creates or checks the pools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import ConfigError

Role = Literal["source", "scratch"]
POOL_PREFIX = "pg_backup"
# Airflow keeps pool names in a 256-character column.
POOL_NAME_MAX = 256


def pool_name(role: Role, server: str) -> str:
    """``pg_backup_<role>_<server>`` with every run of other characters than a-z0-9 as ``_``.

    ``db1.example.org:5432`` gives ``pg_backup_source_db1_example_org_5432``.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", server.lower()).strip("_") or "default"
    return f"{POOL_PREFIX}_{role}_{slug}"[:POOL_NAME_MAX]


def source_pool(cfg: TargetConfig) -> str:
    """The pool of the target's dump task."""
    return pool_name("source", cfg.pools.source_server or cfg.source_conn_id)


def scratch_pool(cfg: TargetConfig) -> str:
    """The pool of the target's verification restore task."""
    return pool_name("scratch", cfg.pools.scratch_server or cfg.scratch_conn_id)


def drill_pool(cfg: TargetConfig) -> str:
    """The drill restore's pool: the standby's (``drill.standby_conn_id``), else scratch's."""
    standby = cfg.drill.standby_conn_id
    return pool_name("scratch", standby) if standby else scratch_pool(cfg)


@dataclass(frozen=True)
class PoolSpec:
    """One pool to create: name, slots, description and the targets that use it."""

    name: str
    slots: int
    description: str
    targets: tuple[str, ...]


def plan_pools(targets: Iterable[TargetConfig]) -> list[PoolSpec]:
    """The pools the targets need, sorted by name.

    :raises ConfigError: targets sharing a pool ask for different sizes (names both and the fix)
    """
    wanted: dict[str, tuple[int, str, list[str]]] = {}
    problems: list[str] = []
    for cfg in targets:
        for role, name, slots, field in (
            ("source", source_pool(cfg), cfg.pools.source_slots, "source_slots"),
            ("scratch", scratch_pool(cfg), cfg.pools.scratch_slots, "scratch_slots"),
            ("scratch", drill_pool(cfg), cfg.pools.scratch_slots, "scratch_slots"),
        ):
            if role == "scratch" and name in wanted and cfg.name in wanted[name][2]:
                continue  # the drill restores on the scratch server: one pool, counted once
            what = "dumps" if role == "source" else "restores (verification and drill)"
            if name not in wanted:
                wanted[name] = (slots, f"pg_backup: {what} at once on one {role} server", [])
            have, _, users = wanted[name]
            if have != slots:
                problems.append(
                    f"targets.{cfg.name}.pools.{field} is {slots} but target {users[0]!r} gives "
                    f"pool {name} {have}: targets sharing a server must agree (set it once "
                    "under defaults.pools)"
                )
            users.append(cfg.name)
    if problems:
        raise ConfigError("\n".join(problems))
    return [
        PoolSpec(name=name, slots=slots, description=text, targets=tuple(users))
        for name, (slots, text, users) in sorted(wanted.items())
    ]
