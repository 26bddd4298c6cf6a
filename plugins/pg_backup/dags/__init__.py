"""The DAG builders: every DAG of every configured target (wiring only)."""

from __future__ import annotations

from airflow.sdk import DAG

from pg_backup.core.config import Config, load_config
from pg_backup.core.names import KINDS
from pg_backup.dags.backup import build_backup_dag
from pg_backup.dags.drill import build_drill_dag
from pg_backup.dags.sweep import build_sweep_dag


def build_dags(config: Config) -> dict[str, DAG]:
    """Every DAG of every target, keyed by dag_id."""
    dags: dict[str, DAG] = {}
    for cfg in config.targets.values():
        built = [build_backup_dag(cfg, kind) for kind in KINDS]
        built += [build_sweep_dag(cfg), build_drill_dag(cfg)]
        dags.update((dag.dag_id, dag) for dag in built)
    return dags


def load_dags() -> dict[str, DAG]:
    """Read the config file and build every DAG (what the thin DAG file calls)."""
    return build_dags(load_config())
