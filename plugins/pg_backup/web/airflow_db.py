"""What the Backups page reads from Airflow's metadata database (the api-server has it).

Storage knows the sets; Airflow knows the runs: how long each stage of the run that made a set
took (its task instances), and when the next scheduled backup is due. Runs removed by
``airflow db clean`` simply have no facts: the page then shows what the catalog knows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from pg_backup.core.names import Stage


@dataclass
class RunFacts:
    """One DAG run: its state, wall seconds, and each backup stage's task duration (s)."""

    state: str | None = None
    seconds: float | None = None
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NextRun:
    """The next run the scheduler will create for a DAG (None: none planned) and its pause."""

    at: datetime | None
    paused: bool


def run_facts(runs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RunFacts]:
    """Facts of the given ``(dag_id, run_id)`` runs: two queries whatever their number."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    wanted = set(runs)
    if not wanted:
        return {}
    dags = {d for d, _ in wanted}
    run_ids = {r for _, r in wanted}
    stages = {s.value for s in Stage}
    out: dict[tuple[str, str], RunFacts] = {}
    with create_session() as session:
        for dag_id, run_id, state, start, end in session.execute(
            select(
                DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date
            ).where(DagRun.dag_id.in_(dags), DagRun.run_id.in_(run_ids))
        ):
            if (dag_id, run_id) in wanted:
                seconds = (end - start).total_seconds() if start and end else None
                out[(dag_id, run_id)] = RunFacts(state=str(state), seconds=seconds)
        for dag_id, run_id, task_id, duration in session.execute(
            select(
                TaskInstance.dag_id,
                TaskInstance.run_id,
                TaskInstance.task_id,
                TaskInstance.duration,
            ).where(
                TaskInstance.dag_id.in_(dags),
                TaskInstance.run_id.in_(run_ids),
                TaskInstance.task_id.in_(stages),
            )
        ):
            facts = out.get((dag_id, run_id))
            if facts is not None and duration is not None:
                facts.stages[task_id] = round(float(duration), 1)
    return out


def next_runs(dag_ids: Iterable[str]) -> dict[str, NextRun]:
    """When the scheduler creates each DAG's next run, and whether the DAG is paused."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(DagModel.dag_id, DagModel.next_dagrun_create_after, DagModel.is_paused).where(
                DagModel.dag_id.in_(set(dag_ids))
            )
        )
        return {dag_id: NextRun(at, bool(paused)) for dag_id, at, paused in rows}
