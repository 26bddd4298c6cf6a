"""Create or check the Airflow pools the config asks for, in Airflow's metadata database.

Runs where Airflow's metadata database is configured (the scheduler's or api-server's
environment, or an init container): ``pg-backup pools``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_backup.core.pools import PoolSpec


@dataclass(frozen=True)
class PoolState:
    """What a pool looked like and what was done: created, resized, ok, missing or too small."""

    spec: PoolSpec
    found: int | None
    action: str


def sync_pools(specs: list[PoolSpec], check_only: bool) -> list[PoolState]:
    """Create missing pools and set the configured sizes (``check_only``: change nothing).

    A check reports a pool ``missing`` (its tasks would never be scheduled) or ``differs``.
    """
    from airflow.models.pool import Pool

    states = []
    for spec in specs:
        pool = Pool.get_pool(spec.name)
        found = None if pool is None else int(pool.slots)
        if found == spec.slots:
            action = "ok"
        elif check_only:
            action = "missing" if found is None else "differs"
        else:
            Pool.create_or_update_pool(
                name=spec.name,
                slots=spec.slots,
                description=spec.description,
                include_deferred=False,
            )
            action = "created" if found is None else "resized"
        states.append(PoolState(spec=spec, found=found, action=action))
    return states
