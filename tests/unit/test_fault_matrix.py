"""The fault matrix: what an operator can do or meet, what must happen, and the tests that prove it.

Every row is proven by real parts (PostgreSQL, a second cluster, S3 over HTTP, SMTP, Airflow),
each test run by CI with ``make test``. The check below keeps the index honest: a row that
names a test that no longer exists fails the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

# (fault, what must happen, tests). Paths are below tests/.
MATRIX: list[tuple[str, str, list[str]]] = [
    (
        "S3 endpoint down mid-upload",
        "upload fails naming the endpoint; no manifest; a retry completes the same set",
        [
            "integration/test_failures.py::test_upload_to_stopped_s3_endpoint_fails_without_manifest",
            "integration/test_failures.py::test_upload_interrupted_before_manifest_leaves_no_manifest",
        ],
    ),
    (
        "upload fails while the verification restore (beside it) succeeds",
        "no verification.json, no asset event, one mail (the upload's); the run fails",
        [
            "integration/test_mark_verified.py::test_failed_upload_leaves_no_verification_record_and_one_mail",
            "integration/test_mark_verified.py::test_mark_verified_writes_nothing_without_the_upload",
        ],
    ),
    (
        "staging disk full",
        "the error names the file, the free space and the fix; no part file left",
        [
            "integration/test_operator_faults.py::test_full_staging_disk_names_the_path_in_python_stages_and_in_pg_dump"
        ],
    ),
    (
        "staging_dir local to each worker (Celery workers that share no disk)",
        "the stage that cannot see its upstream's file fails at once, naming the writing host, "
        "the reading host and staging_url; no retry; nothing verified",
        [
            "e2e/test_celery.py::test_local_staging_not_shared_fails_naming_both_hosts",
            "unit/test_staging.py::test_missing_file_from_another_host_names_both_hosts_and_the_fix",
        ],
    ),
    (
        "staged object changed, or a stage killed while writing one (object-store staging)",
        "the next stage refuses the changed object; an aborted write leaves no object or upload",
        [
            "integration/test_object_staging.py::test_changed_staged_object_is_refused_and_a_failed_write_leaves_nothing"
        ],
    ),
    (
        "staging bucket missing or unreachable",
        "preflight fails naming the bucket before anything is staged",
        [
            "integration/test_object_staging.py::test_preflight_proves_the_staging_bucket_takes_an_object"
        ],
    ),
    (
        "forty targets on one server, or a pool never created",
        "dumps wait in the server's pool (never overlapping with one slot); `pg-backup pools "
        "--check` names a missing pool",
        [
            "e2e/test_celery.py::test_three_targets_verify_across_two_workers_with_object_staging",
            "integration/test_pools.py::test_pools_command_creates_checks_and_resizes",
        ],
    ),
    (
        "pg_dump killed (SIGKILL, the OOM killer)",
        "the dump fails saying 'was killed by SIGKILL'",
        ["integration/test_operator_faults.py::test_sigkilled_pg_dump_says_so"],
    ),
    (
        "task runner killed",
        "pg_dump dies with it: no orphan holding a snapshot and locks",
        ["integration/test_kill.py::test_killed_task_process_kills_pg_dump"],
    ),
    (
        "corrupt object in storage",
        "the drill fails on the hash; its report and mail name the object in one line",
        ["integration/test_drill.py::test_flipped_byte_in_storage_is_caught_by_the_hash"],
    ),
    (
        "missing or truncated object, missing side documents",
        "the set is held for a human and shown; `pg-backup list` shows the stored size differs",
        [
            "integration/test_sweep_faults.py::test_damaged_sets_are_held_and_reported_not_deleted",
            "integration/test_upload_rerun.py::test_upload_rerun_after_a_green_run_keeps_the_verified_set",
        ],
    ),
    (
        "wrong private key",
        "decrypt fails naming the recipients the set was made for, never the key",
        [
            "integration/test_drill.py::test_wrong_identity_names_the_recipients",
            "integration/test_cli.py::test_verify_with_wrong_key_fails_clearly",
        ],
    ),
    (
        "pg_dump older than the server",
        "preflight names the client package to install",
        ["unit/test_preflight.py::test_old_pg_dump_names_the_package_to_install"],
    ),
    (
        "a migration (DDL) during the dump",
        "the migration waits for the dump; the counts are the snapshot's",
        [
            "integration/test_operator_faults.py::test_a_migration_during_the_dump_waits_for_it_and_the_counts_stay_exact"
        ],
    ),
    (
        "heavy writes during the dump",
        "counts are exact for the snapshot; the set verifies",
        ["integration/test_pipeline.py::test_inserts_during_dump_still_verify_exactly"],
    ),
    (
        "scratch connection = the source (any spelling)",
        "preflight refuses; daily, drill and CLI never create, restore into or drop it",
        [
            "integration/test_failures.py::test_scratch_equal_to_source_fails_preflight_source_untouched",
            "integration/test_source_guard.py::test_daily_preflight_refuses_a_scratch_connection_that_aliases_the_source",
            "integration/test_source_guard.py::test_backup_and_drill_databases_never_take_the_source_even_if_names_collide",
            "integration/test_source_guard.py::test_without_the_system_identifier_the_probe_decides_and_unknown_is_refused",
        ],
    ),
    (
        "the source stops answering after the dump",
        "restore and verify go on; the manifest's recorded identity still refuses the source",
        [
            "integration/test_source_guard.py::test_source_down_after_the_dump_neither_fails_verification_nor_opens_the_guard"
        ],
    ),
    (
        "CLI restore --into the source through an alias, with or without --force",
        "refused, also with the source connection unset; the source's oid and rows unchanged",
        [
            "integration/test_source_guard.py::test_special_password_backup_then_alias_of_the_source_is_refused_on_every_cli_path",
            "integration/test_cli.py::test_restore_refuses_the_source",
        ],
    ),
    (
        "password made of @:/%#?&= in a connection URI",
        "the backup verifies; the password shows nowhere",
        [
            "integration/test_source_guard.py::test_special_password_backup_then_alias_of_the_source_is_refused_on_every_cli_path"
        ],
    ),
    (
        "bad config",
        "an import error naming file, field and fix; nothing written",
        [
            "integration/test_failures.py::test_malformed_recipient_fails_config_load_naming_field",
            "unit/test_config_secrets.py::test_durations_outside_their_range_are_config_errors",
        ],
    ),
    (
        "secret in the config (URI as conn id, key in storage.url, private key as identity)",
        "refused naming the field and where secrets belong; never echoed in UI, check or logs",
        [
            "integration/test_secret_faults.py::test_secrets_in_the_config_reach_neither_the_import_error_nor_check",
            "unit/test_config_secrets.py::test_conn_id_field_holding_a_secret_is_refused_unechoed_with_where_it_belongs",
            "unit/test_config_secrets.py::test_private_key_as_identity_conn_id_is_refused_unechoed",
        ],
    ),
    (
        "secret pasted into a connection field; a secret on the CLI",
        "no log, failure mail, drill report or CLI error holds it",
        [
            "integration/test_secret_faults.py::test_a_uri_pasted_into_a_connection_field_reaches_no_log_and_no_mail",
            "integration/test_secret_faults.py::test_a_drill_step_failing_on_a_secret_keeps_it_out_of_report_mail_and_log",
            "integration/test_secret_faults.py::test_cli_errors_never_echo_a_password_given_on_the_command_line",
        ],
    ),
    (
        "secret-leak scan of a whole run",
        "no password in argv, environment (but PGPASSWORD), logs, XCom or stored objects",
        [
            "integration/test_secrets.py::test_pg_dump_argv_holds_no_password_while_it_runs",
            "integration/test_secrets.py::test_full_run_leaks_password_nowhere",
        ],
    ),
    (
        "bad trigger params (UI form or REST conf)",
        "refused naming the param; keep_days has a range; 'false' is not true",
        [
            "integration/test_failures.py::test_bad_emergency_params_rejected_naming_param",
            "integration/test_sweep_faults.py::test_keep_days_out_of_range_is_refused_and_no_manifest_number_stops_the_sweep",
            "unit/test_params.py::test_flag_refuses_everything_but_a_boolean",
            "unit/test_params.py::test_drill_params_out_of_range_are_refused_naming_the_param",
        ],
    ),
    (
        "a manifest holding any number (keep_days 10**10)",
        "the planner plans; no sweep fails on it",
        [
            "unit/test_retention_faults.py::test_any_keep_days_a_manifest_holds_plans_without_overflow"
        ],
    ),
    (
        "clearing one task (upload) of a green run",
        "a no-op: the set stays intact and verified; nothing withdrawn it cannot rebuild",
        [
            "e2e/test_alerts.py::test_clearing_upload_of_a_green_run_keeps_its_verified_set",
            "integration/test_upload_rerun.py::test_upload_rerun_after_a_green_run_keeps_the_verified_set",
            "integration/test_upload_rerun.py::test_replacing_a_set_happens_only_once_the_new_staged_files_are_proven",
        ],
    ),
    (
        "sweep interrupted mid-delete",
        "the next sweep finishes the half-deleted set",
        ["integration/test_sweep.py::test_interrupted_sweep_is_finished_by_next_run"],
    ),
    (
        "sweep delete refused (403)",
        "reported; the sweep goes on, stores its report, then fails and mails; retries re-list",
        [
            "integration/test_sweep_faults.py::test_a_refused_delete_is_reported_the_sweep_goes_on_stores_its_report_then_fails"
        ],
    ),
    (
        "foreign objects in the target or inside a set folder",
        "never deleted, reported; the set holding them is kept for a human",
        [
            "integration/test_sweep_faults.py::test_objects_an_operator_put_in_a_set_folder_are_never_deleted"
        ],
    ),
    (
        "another deployment writing to the same prefix and target",
        "its sets are reported as foreign, never counted toward retention, never deleted",
        [
            "integration/test_sweep_faults.py::test_another_deployments_sets_are_reported_never_counted_nor_deleted"
        ],
    ),
    (
        "wrong storage prefix (objects, no manifest)",
        "the sweep refuses, even with force; nothing deleted",
        [
            "integration/test_sweep.py::test_listing_without_any_manifest_refuses_and_deletes_nothing"
        ],
    ),
    (
        "Object Lock on a planned set",
        "kept and reported as locked",
        ["integration/test_sweep.py::test_object_locked_set_is_kept_and_reported"],
    ),
    (
        "nothing to drill",
        "a report is still stored and mailed, failed, with the cause",
        [
            "integration/test_operator_faults.py::test_a_drill_with_nothing_to_drill_still_stores_and_mails_its_report"
        ],
    ),
    (
        "compressible (TOASTed) data",
        "preflight's estimate is near the dump's size, not 70x below it",
        [
            "integration/test_operator_faults.py::test_preflight_estimates_compressible_data_as_pg_dump_will_write_it"
        ],
    ),
]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


@pytest.mark.parametrize(("fault", "outcome", "tests"), MATRIX, ids=[row[0] for row in MATRIX])
def test_every_row_of_the_fault_matrix_names_tests_that_exist(
    fault: str, outcome: str, tests: list[str]
) -> None:
    """Each fault of the matrix points at tests that exist, so the index cannot rot."""
    assert tests and outcome
    for ref in tests:
        file, _, name = ref.partition("::")
        path = TESTS / file
        assert path.is_file(), f"{fault}: {file} does not exist"
        assert name in _tests_in(path), f"{fault}: {ref} does not exist"
