"""Wiring of ``pg_restore_drill_<target>``: a backup fetched back from storage, restored, proven.

Each task handles every chosen backup in turn (the newest verified one and a random older one),
so the drill is one run, one report and one mail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from pg_backup.config import TargetConfig
from pg_backup.dag_factory import dag_settings

DOC = """
### Weekly restore drill of `{target}`

Proves what matters on the worst day: a backup **in storage**, fetched back with the private key
(connection `{identity}`) and nothing else, restores within the recovery-time objective
({rto}) and holds what the application needs (exact row counts + {checks} invariant checks).

Drilled: the newest verified backup and one older complete backup picked at random (the seed is
in the report, so a drill can be repeated). Trigger with `backup_id` to drill one set exactly.
The report is stored at `{target}/drills/<date>-<run>.json` and mailed, success or not.
Never touches the source database.
"""

TASK_DOCS = {
    "choose": "Newest verified set + one random older complete set (seed recorded).",
    "fetch": "Downloads data and table list; sha256 checked against the manifest.",
    "decrypt": "age -d with the private key(s) from the identity connection.",
    "decompress": "zstd -d to a seekable custom-format dump.",
    "create_drill_dbs": "Setup: an empty pgb_drill_<backup id> database per drilled backup.",
    "restore": "pg_restore -j into the drill database.",
    "verify": "Exact counts against tables.json and the configured invariant checks.",
    "report": "Per-phase times, RTO against the objective, RPO achieved; stored and mailed.",
    "drop_drill_dbs": "Teardown: drops the drill databases whatever happened.",
    "cleanup": "Teardown: removes the drill's downloaded files.",
}


def build_drill_dag(cfg: TargetConfig) -> DAG:
    """``pg_restore_drill_<target>``."""
    drill = cfg.drill
    with DAG(
        dag_id=f"pg_restore_drill_{cfg.name}",
        **dag_settings(cfg, "drill", drill.schedule),
        params={
            "backup_id": Param(
                None,
                type=["null", "string"],
                title="Backup id",
                description="Drill exactly this set (empty: newest + one random older).",
            ),
            "seed": Param(
                None,
                type=["null", "integer"],
                title="Seed",
                description="Repeat an earlier drill's random pick (from its report).",
            ),
        },
        doc_md=DOC.format(
            target=cfg.name,
            identity=cfg.encryption.identity_conn_id,
            rto=drill.rto,
            checks=len(drill.checks),
        ),
    ) as dag:
        t = cfg.timeouts

        def workdir(context: dict[str, Any], backup_id: str | None = None) -> Path:
            safe = context["dag_run"].run_id.replace(":", "_").replace("+", "_")
            base = Path(cfg.staging_dir) / cfg.name / f"drill-{safe}"
            return base / backup_id if backup_id else base

        def manifests(chosen: dict[str, Any]) -> dict[str, Any]:
            from pg_backup.manifest import Manifest

            return {b: Manifest.model_validate(m) for b, m in chosen["manifests"].items()}

        @task(execution_timeout=t.preflight, doc_md=TASK_DOCS["choose"])
        def choose(**context: Any) -> dict[str, Any]:
            import zlib

            from pg_backup.drill import choose_backups, load_manifest
            from pg_backup.storage import open_storage
            from pg_backup.sweep import inventory

            store = open_storage(cfg.storage)
            found = inventory(store, cfg.name)
            complete = [
                {"backup_id": s.backup_id, "taken_at": s.taken_at, "status": s.status}
                for s in found.sets
                if s.status in ("verified", "unverified")
            ]
            params = context["params"]
            run_id = context["dag_run"].run_id
            seed = params.get("seed")
            seed = int(seed) if seed is not None else zlib.crc32(run_id.encode())
            picks = choose_backups(complete, seed, params.get("backup_id") or None)
            return {
                "seed": seed,
                "backups": picks,
                "manifests": {
                    b: load_manifest(store, cfg.name, b).model_dump(mode="json") for b in picks
                },
            }

        @task(execution_timeout=t.upload, doc_md=TASK_DOCS["fetch"])
        def fetch(chosen: dict[str, Any], **context: Any) -> dict[str, Any]:
            from pg_backup.drill import fetch_set
            from pg_backup.storage import open_storage

            store = open_storage(cfg.storage)
            return {
                b: fetch_set(store, m, workdir(context, b)) for b, m in manifests(chosen).items()
            }

        @task(execution_timeout=t.encrypt, doc_md=TASK_DOCS["decrypt"])
        def decrypt(chosen: dict[str, Any], fetched: dict[str, Any], **context: Any) -> dict:
            from pg_backup.drill import decrypt_set, identities_from_connection

            keys = identities_from_connection(cfg.encryption.identity_conn_id)
            return {
                b: decrypt_set(workdir(context, b), fetched[b], keys, m)
                for b, m in manifests(chosen).items()
            }

        @task(execution_timeout=t.compress, doc_md=TASK_DOCS["decompress"])
        def decompress(decrypted: dict[str, Any], **context: Any) -> dict[str, Any]:
            from pg_backup.drill import decompress_set

            return {b: decompress_set(workdir(context, b), d) for b, d in decrypted.items()}

        @task(execution_timeout=t.teardown, doc_md=TASK_DOCS["create_drill_dbs"])
        def create_drill_dbs(chosen: dict[str, Any]) -> list[str]:
            from pg_backup import layout
            from pg_backup.pgconn import endpoint
            from pg_backup.restore import create_database, refuse_source

            scratch = endpoint(cfg.scratch_conn_id)
            names = []
            for backup in chosen["backups"]:
                name = layout.drill_db_name(backup)
                refuse_source(scratch, endpoint(cfg.source_conn_id), name)
                create_database(scratch, name)
                names.append(name)
            return names

        @task(execution_timeout=t.restore, doc_md=TASK_DOCS["restore"])
        def restore(decompressed: dict[str, Any], databases: list[str], **context: Any) -> dict:
            from pg_backup import layout, staging
            from pg_backup.pgconn import endpoint
            from pg_backup.restore import create_database, restore_dump

            scratch = endpoint(cfg.scratch_conn_id)
            seconds = {}
            for backup, out in decompressed.items():
                name = layout.drill_db_name(backup)
                if context["ti"].try_number > 1:
                    create_database(scratch, name)  # start a retried restore from empty
                dump = staging.StagedFile.from_xcom(out["dump"])
                path = workdir(context, backup) / dump.name
                staging.check_present(path, dump)
                seconds[backup] = round(
                    restore_dump(
                        scratch.with_db(name), str(path), cfg.restore.jobs, cfg.dump.pg_bin_dir
                    ),
                    3,
                )
            return seconds

        @task(execution_timeout=t.verify, doc_md=TASK_DOCS["verify"])
        def verify(decrypted: dict[str, Any], restored: dict[str, Any], **context: Any) -> dict:
            import time
            from dataclasses import asdict

            from pg_backup import layout
            from pg_backup.drill import expected_counts, run_checks
            from pg_backup.pgconn import endpoint
            from pg_backup.verify import compare_database

            scratch = endpoint(cfg.scratch_conn_id)
            out = {}
            for backup in restored:
                started = time.monotonic()
                target = scratch.with_db(layout.drill_db_name(backup))
                expected = expected_counts(workdir(context, backup), decrypted[backup])
                result = compare_database(
                    target, expected, cfg.dump.schemas, cfg.dump.exclude_schemas
                )
                checks = run_checks(target, list(cfg.drill.checks))
                out[backup] = {
                    "relations": result.checked,
                    "rows": result.rows,
                    "counts_ok": result.ok,
                    "differences": [
                        f"{d.label}: snapshot {d.expected} restored {d.restored}"
                        for d in result.differences
                    ],
                    "checks": [asdict(c) for c in checks],
                    "seconds": round(time.monotonic() - started, 3),
                }
            return out

        @task(execution_timeout=t.teardown, doc_md=TASK_DOCS["report"], trigger_rule="all_done")
        def report(**context: Any) -> dict[str, Any]:
            from pg_backup.drill import run_report

            return run_report(cfg, context)

        @task(execution_timeout=t.teardown, doc_md=TASK_DOCS["drop_drill_dbs"])
        def drop_drill_dbs(**context: Any) -> list[str]:
            from pg_backup import layout
            from pg_backup.pgconn import endpoint
            from pg_backup.restore import drop_database, refuse_source

            chosen = context["ti"].xcom_pull(task_ids="choose") or {"backups": []}
            scratch = endpoint(cfg.scratch_conn_id)
            dropped = []
            for backup in chosen["backups"]:
                name = layout.drill_db_name(backup)
                refuse_source(scratch, endpoint(cfg.source_conn_id), name)
                if drop_database(scratch, name):
                    dropped.append(name)
            return dropped

        @task(execution_timeout=t.teardown, doc_md=TASK_DOCS["cleanup"])
        def cleanup(**context: Any) -> str:
            from pg_backup.staging import remove_dir

            path = workdir(context)
            remove_dir(path)
            return f"removed {path}"

        chosen = choose()
        fetched = fetch(chosen)
        decrypted = decrypt(chosen, fetched)
        decompressed = decompress(decrypted)
        databases = create_drill_dbs(chosen)
        restored = restore(decompressed, databases)
        verified = verify(decrypted, restored)
        reported = report()
        dropped = drop_drill_dbs().as_teardown(setups=databases)
        cleaned = cleanup().as_teardown(setups=chosen)
        decompressed >> databases
        verified >> reported
        [reported, dropped] >> cleaned
        verified >> dropped
    return dag
