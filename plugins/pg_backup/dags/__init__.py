"""The DAG builders: every DAG of every configured target (wiring only)."""

from __future__ import annotations

from collections.abc import Callable

from airflow.sdk import DAG

from pg_backup.core.config import Config, TargetConfig, load_config
from pg_backup.core.names import KINDS, backup_dag_id, drill_dag_id, sweep_dag_id


def _builders(cfg: TargetConfig) -> dict[str, Callable[[], DAG]]:
    """dag_id -> how to build it, for every DAG of one target (builders imported when called)."""

    def backup(kind: str) -> Callable[[], DAG]:
        def build() -> DAG:
            from pg_backup.dags.backup import build_backup_dag

            return build_backup_dag(cfg, kind)  # type: ignore[arg-type]

        return build

    def sweep() -> DAG:
        from pg_backup.dags.sweep import build_sweep_dag

        return build_sweep_dag(cfg)

    def drill() -> DAG:
        from pg_backup.dags.drill import build_drill_dag

        return build_drill_dag(cfg)

    builders = {backup_dag_id(cfg.name, kind): backup(kind) for kind in KINDS}
    builders[sweep_dag_id(cfg.name)] = sweep
    builders[drill_dag_id(cfg.name)] = drill
    return builders


def build_dags(config: Config, only: str | None = None) -> dict[str, DAG]:
    """Every DAG of every target, keyed by dag_id; just ``only`` when it is one of them.

    :param only: the DAG a task process parses the file for (Airflow's parsing context): a
        task of one DAG need not build the 4 x targets others (about 30 ms each)
    """
    builders: dict[str, Callable[[], DAG]] = {}
    for cfg in config.targets.values():
        builders.update(_builders(cfg))
    if only in builders:
        return {only: builders[only]()}
    return {dag_id: build() for dag_id, build in builders.items()}


def load_dags() -> dict[str, DAG]:
    """Read the config file and build its DAGs (what the thin DAG file calls)."""
    from airflow.sdk import get_parsing_context

    return build_dags(load_config(), only=get_parsing_context().dag_id)
