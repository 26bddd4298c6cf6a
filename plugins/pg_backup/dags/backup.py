"""Wiring of ``pg_backup_<target>`` and ``pg_backup_emergency_<target>``.

Each task unpacks its upstream records, calls one package function and returns a record.
Nothing here touches a connection, a database or the network: that happens when tasks run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pg_backup.adapters.notify import deadline_alerts, failure_notifier
from pg_backup.core import params
from pg_backup.core.config import TargetConfig
from pg_backup.core.layout import run_info
from pg_backup.core.names import (
    CHECK_DESTINATIONS,
    BackupTask,
    Kind,
    Stage,
    backup_dag_id,
    upload_task_id,
)
from pg_backup.core.pools import scratch_pool, source_pool
from pg_backup.dags.common import BackupDAG, backup_asset, dag_settings

DOC_BACKUP = """
### Verified PostgreSQL backup of `{target}`

preflight → dump (exported snapshot + exact counts), then two branches at once:
compress (zstd) → encrypt (age) → upload (data, tables, manifest last), and
restore into `pgb_verify_<backup id>` → verify rows, content and objects;
then mark_verified stores `verification.json` (verified or failed) where the upload succeeded.
Teardowns always drop the scratch database and clear staging (kept when a stage failed).

* Storage: {storage}
* Source connection: `{source}`, scratch connection: `{scratch}`
* A green run means: the set is in storage, and its dump restored with exactly the rows,
  content and objects of the snapshot (`verification.json` says what was proven). Each
  success adds an event to the asset `{asset}` (Assets view = backup history).
"""

DOC_EMERGENCY = """
### Emergency backup of `{target}` (manual)

Press **Trigger**, give a reason, and the same stages as `pg_backup_{target}` run at once.
The set is tagged `emergency` and kept `keep_days` days, apart from the daily rotation.
Untick `verify` only when there is no time for the verification restore.
"""

# Absolute priorities: with few worker slots, a dump (of any target) starts before another
# target's verification restore, so a long restore never delays the next backup's snapshot.
PRIORITY: dict[str, int] = {
    Stage.PREFLIGHT: 30,
    Stage.DUMP: 30,
    Stage.COMPRESS: 20,
    Stage.ENCRYPT: 20,
    Stage.UPLOAD: 20,
    BackupTask.MARK_VERIFIED: 20,
    BackupTask.CREATE_SCRATCH_DB: 10,
    Stage.RESTORE: 10,
    Stage.VERIFY: 10,
}

TASK_DOCS = {
    Stage.PREFLIGHT: "Source reachable, pg_dump new enough, scratch server is not the source "
    "and holds the source's locale, storage writable, staging space enough, recipients parse. "
    "Writes nothing.",
    Stage.DUMP: "pg_dump -Fc under an exported snapshot; exact row counts, content fingerprints "
    "and the object inventory in that snapshot, proven not raced by TRUNCATE or rewrites.",
    Stage.COMPRESS: "zstd over all cores; checks the dump's sha256 while reading it.",
    Stage.ENCRYPT: "age to the configured public keys; checks the input's sha256 while reading.",
    Stage.UPLOAD: "Data object, tables.json.age, then manifest.json; each proven by size and "
    "checksum. A rerun keeps what storage already holds as staged (a no-op for a complete set) "
    "and withdraws nothing unless every staged file it needs is there and matches. Cleared "
    "after mark_verified stored the proof in other destinations, it stores it here too.",
    CHECK_DESTINATIONS: "Fails the run, naming them, when a destination does not hold the "
    "set (its upload task failed); clear that upload task once the destination answers.",
    BackupTask.CREATE_SCRATCH_DB: "Setup: an empty pgb_verify_<backup id> database on the "
    "scratch server, in the source's locale as preflight read it, while the dump runs.",
    Stage.RESTORE: "pg_restore -j into the scratch database; any error fails with its messages.",
    Stage.VERIFY: "Restored rows, content fingerprints, objects and sequence values == the "
    "snapshot's; stages the record (stored by mark_verified once the upload succeeded).",
    BackupTask.MARK_VERIFIED: "Once the upload and verify both ended: stores verification.json "
    "beside the manifest (failed proofs too, as failed), refreshes the catalog index, emits the "
    "asset event. Writes nothing unless the upload proved the set in storage.",
    BackupTask.DROP_SCRATCH_DB: "Teardown: drops the scratch database, whatever happened.",
    BackupTask.CLEANUP_STAGING: "Teardown: removes the run's staging files once the set is "
    "complete; keeps them after a failure for inspection (the retention sweep removes them "
    "later).",
}


class _AlreadyReported(AirflowFailException):
    """mark_verified failing because an upstream task failed: no retries, no second mail."""


def _unless_already_reported(notifier: Any) -> Any:
    """The failure mail, except for a failure that only repeats an upstream task's."""

    def notify(context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), _AlreadyReported):
            notifier(context)

    return notify if notifier is not None else None


def emergency_params(cfg: TargetConfig) -> dict[str, Param]:
    """The trigger form of the emergency DAG (ranges from ``core.params``)."""
    return {
        "reason": Param(
            type="string",
            minLength=1,
            maxLength=params.REASON_MAX,
            pattern=r"\S",
            title="Reason",
            description="Why this backup is taken now (kept in the manifest).",
        ),
        "verify": Param(
            True,
            type="boolean",
            title="Verify by restoring",
            description="Restore into a scratch database and prove rows, content and objects.",
        ),
        "keep_days": Param(
            cfg.emergency.keep_days,
            type="integer",
            minimum=params.KEEP_DAYS_MIN,
            maximum=params.KEEP_DAYS_MAX,
            title="Keep days",
            description="How long the retention sweep keeps this emergency set.",
        ),
    }


def build_backup_dag(cfg: TargetConfig, kind: Kind) -> DAG:
    """``pg_backup_<target>`` (scheduled) or ``pg_backup_emergency_<target>`` (manual)."""
    emergency = kind == "emergency"
    asset = backup_asset(cfg.name)
    multi = cfg.multi_destination
    destinations = [d.name for d in cfg.destinations]
    upload_ids = [upload_task_id(name, multi) for name in destinations]
    timeouts = cfg.timeouts

    def runtime(context: dict[str, Any]) -> Any:
        from pg_backup.stages.runtime import Runtime

        return Runtime(cfg, run_info(cfg.name, kind, cfg.staging_dir, context))

    def verifying(context: dict[str, Any]) -> bool:
        return params.wants_verification(context["params"]) if emergency else True

    def stage(name: Stage, **kwargs: Any) -> Any:
        return task(
            task_id=name.value,
            execution_timeout=getattr(timeouts, name.value),
            doc_md=TASK_DOCS[name],
            priority_weight=PRIORITY[name],
            weight_rule="absolute",
            **kwargs,
        )

    def pooled(name: Stage) -> dict[str, Any]:
        """The dump waits for its source server's pool, the restore for its scratch server's."""
        pool = source_pool(cfg) if name == Stage.DUMP else scratch_pool(cfg)
        return {"pool": pool, "pool_slots": 1}

    def side_task(name: str, **kwargs: Any) -> Any:
        return task(
            task_id=str(name),
            execution_timeout=timeouts.teardown,
            doc_md=TASK_DOCS[name],
            priority_weight=PRIORITY.get(name, 1),
            weight_rule="absolute",
            **kwargs,
        )

    with BackupDAG(
        dag_id=backup_dag_id(cfg.name, kind),
        **dag_settings(cfg, kind, None if emergency else cfg.schedule),
        params=emergency_params(cfg) if emergency else {},
        doc_md=(DOC_EMERGENCY if emergency else DOC_BACKUP).format(
            target=cfg.name,
            storage=", ".join(
                f"`{d.name}` `{d.url}`" if multi else f"`{d.url}`" for d in cfg.destinations
            ),
            source=cfg.source_conn_id,
            scratch=cfg.scratch_conn_id,
            asset=asset.name,
        ),
        deadline=deadline_alerts(cfg) or None,
    ) as dag:

        @stage(Stage.PREFLIGHT)
        def preflight(**context: Any) -> dict[str, Any]:
            from pg_backup.stages.preflight import run_preflight

            if emergency:
                params.check_emergency_params(context["params"])
            return run_preflight(runtime(context)).to_xcom()

        @stage(Stage.DUMP, **pooled(Stage.DUMP))
        def dump(**context: Any) -> dict[str, Any]:
            from pg_backup.stages.dump import run_dump

            return run_dump(runtime(context)).to_xcom()

        @stage(Stage.COMPRESS)
        def compress(dumped: dict[str, Any], **context: Any) -> dict[str, Any]:
            from pg_backup.core.records import DumpResult
            from pg_backup.stages.compress import compress_dump

            return compress_dump(runtime(context), DumpResult.from_xcom(dumped).dump).to_xcom()

        @stage(Stage.ENCRYPT)
        def encrypt(compressed: dict[str, Any], dumped: dict[str, Any], **context: Any) -> dict:
            from pg_backup.core.records import DumpResult, StagedFile
            from pg_backup.stages.encrypt import encrypt_set

            dump = DumpResult.from_xcom(dumped)
            return encrypt_set(
                runtime(context), StagedFile.from_xcom(compressed), dump.tables, dump.globals
            ).to_xcom()

        def upload_task(destination: str) -> Any:
            @task(
                task_id=upload_task_id(destination, multi),
                execution_timeout=timeouts.upload,
                priority_weight=PRIORITY[Stage.UPLOAD],
                weight_rule="absolute",
                doc_md=TASK_DOCS[Stage.UPLOAD]
                + (f" Destination: `{destination}`." if multi else ""),
            )
            def upload(
                dumped: dict[str, Any],
                encrypted: dict[str, Any],
                checked: dict[str, Any],
                **context,
            ) -> dict[str, Any]:
                from pg_backup.core.manifest import Verification
                from pg_backup.core.records import DumpResult, EncryptResult, PreflightResult
                from pg_backup.stages.destinations import upload_to

                marker = None
                if emergency:
                    user = getattr(context["dag_run"], "triggering_user_name", None)
                    marker = params.emergency_marker(context["params"], user)
                # A cleared upload after mark_verified stored the proof elsewhere: here too.
                verified = (
                    context["ti"].xcom_pull(task_ids=BackupTask.MARK_VERIFIED.value)
                    if multi
                    else None
                )
                return upload_to(
                    runtime(context),
                    destination,
                    DumpResult.from_xcom(dumped),
                    EncryptResult.from_xcom(encrypted),
                    emergency=marker,
                    source=PreflightResult.from_xcom(checked).source,
                    verified=Verification.model_validate(verified) if verified else None,
                ).to_xcom()

            return upload

        # Its failure repeats those of the upload tasks, which mailed: it fails the run at once
        # (a retry could not change the results it reads) and without a mail.
        @side_task(
            CHECK_DESTINATIONS,
            trigger_rule="all_done",
            on_failure_callback=_unless_already_reported(failure_notifier(cfg)),
        )
        def check_destinations(**context: Any) -> list[str]:
            from pg_backup.core.errors import StorageError
            from pg_backup.stages.destinations import check_held

            pulled = {
                name: context["ti"].xcom_pull(task_ids=upload_task_id(name, multi))
                for name in destinations
            }
            try:
                return check_held(runtime(context), pulled)
            except StorageError as exc:
                raise _AlreadyReported(str(exc)) from None

        @side_task(BackupTask.CREATE_SCRATCH_DB)
        def create_scratch_db(checked: dict[str, Any], **context: Any) -> str:
            from pg_backup.core.records import PreflightResult
            from pg_backup.stages.restore import create_scratch_db as create

            if not verifying(context):
                raise AirflowSkipException("verify=false: no verification restore")
            return create(runtime(context), PreflightResult.from_xcom(checked).locale)

        @stage(Stage.RESTORE, **pooled(Stage.RESTORE))
        def restore(
            dumped: dict[str, Any], database: str, checked: dict[str, Any], **context: Any
        ) -> dict[str, Any]:
            from pg_backup.core.records import DumpResult, PreflightResult
            from pg_backup.stages.restore import restore_staged

            return restore_staged(
                runtime(context),
                DumpResult.from_xcom(dumped),
                database,
                attempt=context["ti"].try_number,
                made_in=PreflightResult.from_xcom(checked).locale,
            ).to_xcom()

        @stage(Stage.VERIFY)
        def verify(dumped: dict[str, Any], restored: dict[str, Any], **context) -> dict[str, Any]:
            from pg_backup.core.records import DumpResult, RestoreResult
            from pg_backup.stages.verify import verify_restore

            record = verify_restore(
                runtime(context), DumpResult.from_xcom(dumped), RestoreResult.from_xcom(restored)
            )
            return record.model_dump(mode="json")

        # Runs once the uploads and verify ended (a skipped verify, verify=false, skips it): it
        # stores the record in every destination whose upload succeeded, and fails unless the
        # proof did. One destination down fails its own upload task only: the proof still goes
        # to the others, and check_destinations fails the run naming the one missing.
        @side_task(
            BackupTask.MARK_VERIFIED,
            outlets=[asset],
            trigger_rule="all_done_min_one_success",
            on_failure_callback=_unless_already_reported(failure_notifier(cfg)),
        )
        def mark_verified(**context: Any) -> dict[str, Any]:
            from pg_backup.core.errors import FollowOnFailure
            from pg_backup.core.manifest import Verification
            from pg_backup.core.records import UploadResult
            from pg_backup.stages.mark_verified import mark_verified as mark
            from pg_backup.stages.verify import asset_event

            ti = context["ti"]
            pulled = [ti.xcom_pull(task_ids=i) for i in upload_ids]
            uploads = [UploadResult.from_xcom(v) if v else None for v in pulled]
            verified = ti.xcom_pull(task_ids=Stage.VERIFY.value)
            rt = runtime(context)
            try:
                record, held = mark(
                    rt, uploads, Verification.model_validate(verified) if verified else None
                )
            except FollowOnFailure as exc:
                raise _AlreadyReported(str(exc)) from None
            context["outlet_events"][asset].extra = asset_event(rt, held[0], record)
            return record.model_dump(mode="json")

        @side_task(BackupTask.DROP_SCRATCH_DB)
        def drop_scratch_db(**context: Any) -> bool:
            from pg_backup.stages.restore import drop_scratch_db as drop

            return drop(runtime(context))

        @side_task(BackupTask.CLEANUP_STAGING)
        def cleanup_staging(**context: Any) -> str:
            from pg_backup.stages.cleanup import cleanup_staging as cleanup

            # The set is complete when its last tasks recorded a result: kept while a
            # destination still lacks it, for its upload task to be cleared.
            last = [*upload_ids, *([BackupTask.MARK_VERIFIED.value] if verifying(context) else [])]
            done = all(context["ti"].xcom_pull(task_ids=t) for t in last)
            return cleanup(runtime(context), done)

        checked = preflight()
        dumped = dump()
        compressed = compress(dumped)
        encrypted = encrypt(compressed, dumped)
        uploads = [upload_task(name)(dumped, encrypted, checked) for name in destinations]
        # The verification restore needs only the staged dump: it runs beside the uploads. Its
        # empty database is made in the source's locale (from preflight) while the dump runs.
        scratch = create_scratch_db(checked)
        restored = restore(dumped, scratch, checked)
        verified = verify(dumped, restored)
        marked = mark_verified()
        dropped = drop_scratch_db().as_teardown(setups=scratch)
        cleaned = cleanup_staging().as_teardown(setups=checked)

        checked >> dumped
        [*uploads, verified] >> marked
        # A leaf that fails the run when a destination lacks the set, whatever mark_verified
        # did (it is skipped when verify=false, and succeeds when another destination holds it).
        uploads >> check_destinations()
        verified >> dropped
        [marked, dropped] >> cleaned

    return dag
