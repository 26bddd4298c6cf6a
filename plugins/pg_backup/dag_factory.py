"""Builds the DAGs of every configured target. Wiring only: each task calls one stage function.

Nothing here touches a connection, a database or the network: that happens when tasks run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Asset, Param, task
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable
from airflow.sdk.exceptions import AirflowSkipException

from pg_backup.config import Config, TargetConfig, load_config
from pg_backup.layout import Kind, RunInfo, run_info
from pg_backup.notify import deadline_alerts, failure_notifier, retry_notifier

DOC_BACKUP = """
### Verified PostgreSQL backup of `{target}`

preflight → dump (exported snapshot + exact counts) → compress (zstd) → encrypt (age) →
upload (data, tables, manifest last) → restore into `pgb_verify_<backup id>` → verify counts.
Teardowns always drop the scratch database and clear staging (kept when a stage failed).

* Storage: `{storage}`
* Source connection: `{source}`, scratch connection: `{scratch}`
* A green run means: the set is in storage, and its dump restored with exactly the rows of
  the snapshot. Each success adds an event to the asset `{asset}` (Assets view = backup history).
"""

DOC_EMERGENCY = """
### Emergency backup of `{target}` (manual)

Press **Trigger**, give a reason, and the same stages as `pg_backup_{target}` run at once.
The set is tagged `emergency` and kept `keep_days` days, apart from the daily rotation.
Untick `verify` only when there is no time for the verification restore.
"""

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)

TASK_DOCS = {
    "preflight": "Source reachable, pg_dump new enough, scratch server is not the source, "
    "storage writable, staging space enough, recipients parse. Writes nothing.",
    "dump": "pg_dump -Fc under an exported snapshot; exact row counts in that snapshot.",
    "compress": "zstd over all cores; checks the dump's sha256 while reading it.",
    "encrypt": "age to the configured public keys; checks the input's sha256 while reading.",
    "upload": "Data object, tables.json.age, then manifest.json; each proven by size and checksum.",
    "create_scratch_db": "Setup: an empty pgb_verify_<backup id> database on the scratch server.",
    "restore": "pg_restore -j into the scratch database; any error fails with its messages.",
    "verify_counts": "Restored counts == snapshot counts for every relation; writes "
    "verification.json; emits the asset event.",
    "drop_scratch_db": "Teardown: drops the scratch database, whatever happened.",
    "cleanup_staging": "Teardown: removes the run's staging files once the set is complete; "
    "keeps them after a failure for inspection (the retention sweep removes them later).",
}


class BackupDAG(DAG):
    """A DAG whose in-process test runs without its Deadline Alerts.

    Airflow 3.3's ``dag.test()`` (and so ``airflow dags test``) crashes at the end of a
    successful run of a DAG with deadlines (``'dict' object has no attribute 'hex'`` while
    pruning them) and leaves the run "running". Deadlines only fire under a scheduler and a
    triggerer anyway, so a test run drops them; scheduled and triggered runs keep them.
    """

    def test(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``DAG.test`` with the deadlines detached, then put them back."""
        saved = self.deadline
        self.deadline = None
        try:
            return super().test(*args, **kwargs)
        finally:
            self.deadline = saved


def backup_asset(target: str) -> Asset:
    """One asset per target: its events are the backup history."""
    # An "x-" scheme skips Airflow's URI normalizers: looking one up loads every provider's
    # asset handlers, and the amazon provider's imports boto3 (about 1 s per parse).
    return Asset(name=f"pg_backup_{target}", uri=f"x-pgbackup://{target}", group="pg_backup")


def emergency_params(cfg: TargetConfig) -> dict[str, Param]:
    """The trigger form of the emergency DAG."""
    return {
        "reason": Param(
            type="string",
            minLength=1,
            pattern=r"\S",
            title="Reason",
            description="Why this backup is taken now (kept in the manifest).",
        ),
        "verify": Param(
            True,
            type="boolean",
            title="Verify by restoring",
            description="Restore into a scratch database and compare exact row counts.",
        ),
        "keep_days": Param(
            cfg.emergency.keep_days,
            type="integer",
            minimum=1,
            title="Keep days",
            description="How long the retention sweep keeps this emergency set.",
        ),
    }


def check_emergency_params(params: dict[str, Any]) -> None:
    """Re-check the form at run time (a conf may reach us without the UI's validation)."""
    reason = params.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("param 'reason' is required: say why this emergency backup is taken")
    keep = params.get("keep_days")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"param 'keep_days' must be a whole number of days >= 1, got {keep!r}")
    if not isinstance(params.get("verify", True), bool):
        raise ValueError("param 'verify' must be true or false")


def default_args(cfg: TargetConfig) -> dict[str, Any]:
    """Owner, retries with exponential backoff, and the failure (and opt-in retry) mail."""
    args: dict[str, Any] = {
        "owner": cfg.owner,
        "retries": cfg.retries,
        "retry_delay": cfg.retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": cfg.max_retry_delay,
    }
    on_failure = failure_notifier(cfg)
    if on_failure is not None:
        args["on_failure_callback"] = on_failure
    on_retry = retry_notifier(cfg)
    if on_retry is not None:
        args["on_retry_callback"] = on_retry
    return args


def dag_settings(cfg: TargetConfig, tag: str, cron: str | None) -> dict[str, Any]:
    """What every DAG of a target shares: UTC cron, no backfill, one run at a time, tags."""
    return {
        # The config's cron is UTC whatever Airflow's default_timezone says.
        "schedule": CronTriggerTimetable(cron, timezone="UTC") if cron else None,
        # A fixed past start with catchup off: the first run is the latest interval, no backfill.
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["pg_backup", cfg.name, tag, *cfg.tags],
        "default_args": default_args(cfg),
    }


def build_backup_dag(cfg: TargetConfig, kind: Kind) -> DAG:
    """``pg_backup_<target>`` (scheduled) or ``pg_backup_emergency_<target>`` (manual)."""
    emergency = kind == "emergency"
    dag_id = f"pg_backup_emergency_{cfg.name}" if emergency else f"pg_backup_{cfg.name}"
    asset = backup_asset(cfg.name)
    timeouts = cfg.timeouts

    def info(context: dict[str, Any]) -> RunInfo:
        return run_info(cfg.name, kind, cfg.staging_dir, context)

    def verifying(context: dict[str, Any]) -> bool:
        return bool(context["params"].get("verify", True)) if emergency else True

    with BackupDAG(
        dag_id=dag_id,
        **dag_settings(cfg, kind, None if emergency else cfg.schedule),
        params=emergency_params(cfg) if emergency else {},
        doc_md=(DOC_EMERGENCY if emergency else DOC_BACKUP).format(
            target=cfg.name,
            storage=cfg.storage.url,
            source=cfg.source_conn_id,
            scratch=cfg.scratch_conn_id,
            asset=asset.name,
        ),
        deadline=deadline_alerts(cfg) or None,
    ) as dag:

        @task(execution_timeout=timeouts.preflight, doc_md=TASK_DOCS["preflight"])
        def preflight(**context: Any) -> dict[str, Any]:
            from pg_backup.preflight import run_preflight

            if emergency:
                check_emergency_params(context["params"])
            return run_preflight(cfg).to_xcom()

        @task(execution_timeout=timeouts.dump, doc_md=TASK_DOCS["dump"])
        def dump(**context: Any) -> dict[str, Any]:
            from pg_backup.dump import run_dump

            return run_dump(cfg, info(context)).to_xcom()

        @task(execution_timeout=timeouts.compress, doc_md=TASK_DOCS["compress"])
        def compress(dumped: dict[str, Any], **context: Any) -> dict[str, Any]:
            from pg_backup.compress import compress_dump
            from pg_backup.dump import DumpResult

            return compress_dump(cfg, info(context), DumpResult.from_xcom(dumped).dump).to_xcom()

        @task(execution_timeout=timeouts.encrypt, doc_md=TASK_DOCS["encrypt"])
        def encrypt(compressed: dict[str, Any], dumped: dict[str, Any], **context: Any) -> dict:
            from pg_backup.dump import DumpResult
            from pg_backup.encrypt import encrypt_set
            from pg_backup.staging import StagedFile

            data, tables = encrypt_set(
                cfg,
                info(context),
                StagedFile.from_xcom(compressed),
                DumpResult.from_xcom(dumped).tables,
            )
            return {"data": data.to_xcom(), "tables": tables.to_xcom()}

        @task(execution_timeout=timeouts.upload, doc_md=TASK_DOCS["upload"])
        def upload(dumped: dict[str, Any], encrypted: dict[str, Any], **context: Any) -> dict:
            from pg_backup.dump import DumpResult
            from pg_backup.manifest import Emergency
            from pg_backup.staging import StagedFile
            from pg_backup.upload import upload_set

            marker = None
            if emergency:
                params = context["params"]
                marker = Emergency(
                    reason=params["reason"].strip(),
                    keep_days=params["keep_days"],
                    triggered_by=getattr(context["dag_run"], "triggering_user_name", None),
                )
            return upload_set(
                cfg,
                info(context),
                DumpResult.from_xcom(dumped),
                StagedFile.from_xcom(encrypted["data"]),
                StagedFile.from_xcom(encrypted["tables"]),
                emergency=marker,
            ).to_xcom()

        @task(execution_timeout=timeouts.teardown, doc_md=TASK_DOCS["create_scratch_db"])
        def create_scratch_db(dumped: dict[str, Any], **context: Any) -> str:
            from pg_backup.dump import DumpResult
            from pg_backup.restore import create_scratch_db as create

            if not verifying(context):
                raise AirflowSkipException("verify=false: no verification restore")
            return create(cfg, info(context), DumpResult.from_xcom(dumped).encoding)

        @task(execution_timeout=timeouts.restore, doc_md=TASK_DOCS["restore"])
        def restore(dumped: dict[str, Any], database: str, **context: Any) -> dict[str, Any]:
            from pg_backup.dump import DumpResult
            from pg_backup.pgconn import endpoint
            from pg_backup.restore import create_database, restore_staged

            result = DumpResult.from_xcom(dumped)
            if context["ti"].try_number > 1:
                # A previous attempt may have restored half the objects: start from empty.
                create_database(endpoint(cfg.scratch_conn_id), database, result.encoding)
            return restore_staged(cfg, info(context), result.dump, database).to_xcom()

        @task(
            execution_timeout=timeouts.verify,
            doc_md=TASK_DOCS["verify_counts"],
            outlets=[asset],
        )
        def verify_counts(
            dumped: dict[str, Any], restored: dict[str, Any], uploaded: dict[str, Any], **context
        ) -> dict[str, Any]:
            from pg_backup.dump import DumpResult
            from pg_backup.verify import verify_counts as verify

            run = info(context)
            record = verify(
                cfg, run, DumpResult.from_xcom(dumped), restored["database"], restored["seconds"]
            )
            context["outlet_events"][asset].extra = {
                "backup_id": run.backup_id,
                "kind": kind,
                "bytes": uploaded["data_bytes"],
                "location": uploaded["location"],
                "verification": record.status,
                "rows": record.rows_checked,
            }
            return record.model_dump(mode="json")

        @task(execution_timeout=timeouts.teardown, doc_md=TASK_DOCS["drop_scratch_db"])
        def drop_scratch_db(**context: Any) -> bool:
            from pg_backup.restore import drop_scratch_db as drop

            return drop(cfg, info(context))

        @task(execution_timeout=timeouts.teardown, doc_md=TASK_DOCS["cleanup_staging"])
        def cleanup_staging(**context: Any) -> str:
            from pg_backup.staging import remove_dir

            run = info(context)
            ti = context["ti"]
            done = ti.xcom_pull(task_ids="verify_counts")
            if not verifying(context):
                done = ti.xcom_pull(task_ids="upload")
            if not done:
                return f"kept {run.staging_path}: the run did not complete its set"
            remove_dir(run.staging_path)
            return f"removed {run.staging_path}"

        checked = preflight()
        dumped = dump()
        compressed = compress(dumped)
        encrypted = encrypt(compressed, dumped)
        uploaded = upload(dumped, encrypted)
        scratch = create_scratch_db(dumped)
        restored = restore(dumped, scratch)
        verified = verify_counts(dumped, restored, uploaded)
        dropped = drop_scratch_db().as_teardown(setups=scratch)
        cleaned = cleanup_staging().as_teardown(setups=checked)

        checked >> dumped
        uploaded >> scratch
        verified >> dropped
        [verified, dropped] >> cleaned

    return dag


def build_dags(config: Config) -> dict[str, DAG]:
    """Every DAG of every target, keyed by dag_id."""
    from pg_backup.dag_drill import build_drill_dag
    from pg_backup.dag_sweep import build_sweep_dag

    dags: dict[str, DAG] = {}
    for cfg in config.targets.values():
        built = [build_backup_dag(cfg, "scheduled"), build_backup_dag(cfg, "emergency")]
        built += [build_sweep_dag(cfg), build_drill_dag(cfg)]
        dags.update((dag.dag_id, dag) for dag in built)
    return dags


def load_dags() -> dict[str, DAG]:
    """Read the config file and build every DAG (what the thin DAG file calls)."""
    return build_dags(load_config())
