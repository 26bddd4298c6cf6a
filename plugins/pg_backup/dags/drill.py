"""Wiring of ``pg_restore_drill_<target>``: a backup fetched back from storage, restored, proven.

Each task unpacks its upstream records, calls one function of ``stages.drill`` and returns a
record; the report task reads the phases' XComs by their task ids (``core.names.DrillTask``).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from pg_backup.core import params
from pg_backup.core.config import TargetConfig
from pg_backup.core.layout import run_time
from pg_backup.core.names import DRILL_PHASES, DrillTask, drill_dag_id
from pg_backup.core.pools import drill_pool
from pg_backup.dags.common import dag_settings

DOC = """
### Weekly restore drill of `{target}`

Proves what matters on the worst day: a backup **in storage**, fetched back with the private key
(connection `{identity}`) and nothing else, restores within the recovery-time objective
({rto}) and holds what the application needs (exact rows, content and objects of the
snapshot + {checks} invariant checks).

Drilled: the newest verified backup and one older complete backup picked at random (the seed is
in the report, so a drill can be repeated). Trigger with `backup_id` to drill one set exactly.
The report is stored at `{target}/drills/<date>-<run>.json` and mailed, success or not.
Never touches the source database.
"""

TASK_DOCS = {
    DrillTask.CHOOSE: "Newest verified set + one random older complete set of this deployment "
    "(seed recorded). When nothing can be chosen it says why, and the report fails with it.",
    DrillTask.FETCH: "Downloads data and table list; sha256 checked against the manifest.",
    DrillTask.DECRYPT: "age -d with the private key(s) from the identity connection.",
    DrillTask.DECOMPRESS: "zstd -d to a seekable dump; its sha256 checked against the one "
    "recorded at dump time.",
    DrillTask.CREATE_DRILL_DBS: "Setup: an empty pgb_drill_<backup id> database per drilled "
    "backup, in the source's encoding and locale (on the standby server if configured).",
    DrillTask.RESTORE: "pg_restore -j into the drill database, then the source's database "
    "settings; on a standby, the missing roles first and owners and grants too.",
    DrillTask.VERIFY: "Rows, content and objects against tables.json, the configured invariant "
    "checks, and the database as it was (locale, settings; on a standby roles, owners, grants).",
    DrillTask.REPORT: "Per-phase times, RTO against the objective, RPO achieved, and the cause of "
    "any failure in one line; stored and mailed, whatever happened before.",
    DrillTask.DROP_DRILL_DBS: "Teardown: drops the drill databases whatever happened.",
    DrillTask.CLEANUP: "Teardown: removes the drill's downloaded files.",
}


def build_drill_dag(cfg: TargetConfig) -> DAG:
    """``pg_restore_drill_<target>``."""
    t = cfg.timeouts
    timeout = {
        DrillTask.CHOOSE: t.preflight,
        DrillTask.FETCH: t.upload,
        DrillTask.DECRYPT: t.encrypt,
        DrillTask.DECOMPRESS: t.compress,
        DrillTask.RESTORE: t.restore,
        DrillTask.VERIFY: t.verify,
    }

    def runtime() -> Any:
        from pg_backup.stages.runtime import Runtime

        return Runtime(cfg)

    def step(name: DrillTask, **kwargs: Any) -> Any:
        return task(
            task_id=name.value,
            execution_timeout=timeout.get(name, t.teardown),
            doc_md=TASK_DOCS[name],
            **kwargs,
        )

    destination_param = (
        {
            "destination": Param(
                None,
                type=["null", "string"],
                enum=[None, *(d.name for d in cfg.destinations)],
                title="Destination",
                description="Restore from this destination (empty: the next in turn).",
            )
        }
        if cfg.multi_destination
        else {}
    )

    with DAG(
        dag_id=drill_dag_id(cfg.name),
        **dag_settings(cfg, "drill", cfg.drill.schedule),
        params={
            "backup_id": Param(
                None,
                type=["null", "string"],
                maxLength=params.BACKUP_ID_MAX,
                title="Backup id",
                description="Drill exactly this set (empty: newest + one random older).",
            ),
            "seed": Param(
                None,
                type=["null", "integer"],
                minimum=0,
                maximum=params.SEED_MAX,
                title="Seed",
                description="Repeat an earlier drill's random pick (from its report).",
            ),
            **destination_param,
        },
        doc_md=DOC.format(
            target=cfg.name,
            identity=cfg.encryption.identity_conn_id,
            rto=cfg.drill.rto,
            checks=len(cfg.drill.checks),
        ),
    ) as dag:

        @step(DrillTask.CHOOSE)
        def choose(**context: Any) -> dict[str, Any]:
            from pg_backup.stages import drill

            p = context["params"]
            return drill.choose(
                runtime(),
                context["dag_run"].run_id,
                p.get("seed"),
                p.get("backup_id"),
                at=run_time(context),
                destination=p.get("destination"),
            )

        @step(DrillTask.FETCH)
        def fetch(chosen: dict[str, Any], **context: Any) -> dict[str, Any]:
            from pg_backup.stages import drill

            return drill.fetch_chosen(runtime(), chosen, context["dag_run"].run_id)

        @step(DrillTask.DECRYPT)
        def decrypt(chosen: dict[str, Any], fetched: dict[str, Any], **context: Any) -> dict:
            from pg_backup.stages import drill

            return drill.decrypt_chosen(runtime(), chosen, fetched, context["dag_run"].run_id)

        @step(DrillTask.DECOMPRESS)
        def decompress(chosen: dict[str, Any], decrypted: dict[str, Any], **context: Any) -> dict:
            from pg_backup.stages import drill

            return drill.decompress_chosen(runtime(), chosen, decrypted, context["dag_run"].run_id)

        @step(DrillTask.CREATE_DRILL_DBS)
        def create_drill_dbs(chosen: dict[str, Any], **context: Any) -> list[str]:
            from pg_backup.stages import drill

            return drill.create_drill_dbs(runtime(), chosen, context["dag_run"].run_id)

        # Restores wait in their server's pool, with the verification restores of every target.
        @step(DrillTask.RESTORE, pool=drill_pool(cfg), pool_slots=1)
        def restore(
            chosen: dict[str, Any], opened: dict[str, Any], decrypted: dict[str, Any], **context
        ) -> dict:
            from pg_backup.stages import drill

            return drill.restore_chosen(
                runtime(),
                chosen,
                opened,
                decrypted,
                context["dag_run"].run_id,
                context["ti"].try_number,
            )

        @step(DrillTask.VERIFY)
        def verify(chosen: dict[str, Any], decrypted: dict[str, Any], **context: Any) -> dict:
            from pg_backup.stages import drill

            return drill.verify_chosen(runtime(), chosen, decrypted, context["dag_run"].run_id)

        @step(DrillTask.REPORT, trigger_rule="all_done")
        def report(**context: Any) -> dict[str, Any]:
            from pg_backup.stages import drill

            ti, run = context["ti"], context["dag_run"]
            return drill.report(
                runtime(),
                run.run_id,
                run.dag_id,
                run_time(context),
                ti.xcom_pull(task_ids=DrillTask.CHOOSE.value),
                {phase: ti.xcom_pull(task_ids=phase.value) for phase in DRILL_PHASES},
            )

        @step(DrillTask.DROP_DRILL_DBS)
        def drop_drill_dbs(**context: Any) -> list[str]:
            from pg_backup.stages import drill

            chosen = context["ti"].xcom_pull(task_ids=DrillTask.CHOOSE.value)
            return drill.drop_drill_dbs(runtime(), chosen)

        @step(DrillTask.CLEANUP)
        def cleanup(**context: Any) -> str:
            from pg_backup.stages import drill

            return drill.cleanup(runtime(), context["dag_run"].run_id)

        chosen = choose()
        fetched = fetch(chosen)
        decrypted = decrypt(chosen, fetched)
        opened = decompress(chosen, decrypted)
        databases = create_drill_dbs(chosen)
        restored = restore(chosen, opened, decrypted)
        verified = verify(chosen, decrypted)
        reported = report()
        dropped = drop_drill_dbs().as_teardown(setups=databases)
        cleaned = cleanup().as_teardown(setups=chosen)
        opened >> databases
        databases >> restored
        restored >> verified
        verified >> reported
        [reported, dropped] >> cleaned
        verified >> dropped
    return dag
