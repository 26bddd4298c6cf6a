"""Pure parts of the proof: fingerprint sums and partition roots, inventories, the record, budgets."""

from __future__ import annotations

from pg_backup.core.counts import (
    Difference,
    TableCount,
    compare_counts,
    counts_from_json,
    counts_to_json,
    lock_budget_problem,
)
from pg_backup.core.fingerprint import SESSION_SETTINGS, add, ordered_columns, session_options
from pg_backup.core.inventory import compare_inventories, format_object_differences
from pg_backup.core.proof import NOT_RESTORABLE, Proof


def t(name: str, rows: int, fp: str | None, root: str | None = None) -> TableCount:
    return TableCount("public", name, "table", rows, fp, root)


def test_same_counts_other_fingerprint_is_a_content_difference() -> None:
    """One value changed (same row count) fails, naming the table and the aspect 'content'."""
    result = compare_counts(
        [t("Vote", 3, "10"), t("User", 2, "7")], [t("Vote", 3, "11"), t("User", 2, "7")]
    )
    assert not result.ok
    assert result.differences == [Difference('"public"."Vote"', 3, 3, "content")]
    assert result.content_checked == 1
    assert "content differs" in result.differences[0].describe()


def test_matching_fingerprints_count_as_content_proven() -> None:
    """Equal counts and fingerprints prove content for every relation."""
    result = compare_counts(
        [t("Vote", 3, "10"), t("User", 2, "7")], [t("User", 2, "7"), t("Vote", 3, "10")]
    )
    assert result.ok and result.content_checked == 2 and result.content_skipped == []


def test_leaves_loaded_through_the_root_compare_as_the_root() -> None:
    """Rows that moved between leaves (same sum of rows and fingerprints) are not a difference."""
    root = '"public"."e"'
    snapshot = [t("e0", 2000, "5", root), t("e1", 1000, "6", root), t("e2", 2000, "7", root)]
    restored = [t("e0", 1000, "1", None), t("e1", 3000, "17", None), t("e2", 1000, "0", None)]
    result = compare_counts(snapshot, restored)
    assert result.ok, result.differences
    assert result.roots == [root]
    assert result.checked == 1 and result.content_checked == 1
    # a changed value inside the root is still caught, naming the root
    changed = [t("e0", 1000, "1"), t("e1", 3000, "18"), t("e2", 1000, "0")]
    bad = compare_counts(snapshot, changed)
    assert bad.differences == [Difference(root, 5000, 5000, "content")]


def test_old_sets_without_fingerprints_skip_content_and_say_why() -> None:
    """A set written before fingerprints compares counts and names content as not proven."""
    result = compare_counts([t("Vote", 3, None)], [t("Vote", 3, "10")])
    assert result.ok and result.content_checked == 0
    assert result.content_skipped == [
        ('"public"."Vote"', "no fingerprint in the set (written before them)")
    ]


def test_table_document_round_trip_ignores_unknown_keys() -> None:
    """tables.json of any release decodes; fields of newer releases are kept, unknown ones ignored."""
    counts = [t("Vote", 3, "10", '"public"."e"'), TableCount("public", "User", "table", 2)]
    doc = counts_to_json(counts, backup_id="x")
    assert "fingerprint" not in doc["relations"][1]
    doc["relations"][1]["added_by_a_future_release"] = 1
    assert counts_from_json(doc) == counts


def test_fingerprint_helpers() -> None:
    """Sums are exact, unknown parts poison the sum, columns sort by bytes, settings are pinned."""
    assert add(["9223372036854775807", "9223372036854775807"]) == "18446744073709551614"
    assert add(["1", None]) is None
    assert ordered_columns(["b", "B", "a", "É"]) == ["B", "a", "b", "É"]
    options = session_options(1500)
    for name, value in SESSION_SETTINGS.items():
        assert f"-c {name}={value}" in options
    assert "-c lock_timeout=1500" in options and " " not in SESSION_SETTINGS["DateStyle"]


INVENTORY = {
    "index": {'"public"."User"."User_email_key"': "CREATE UNIQUE INDEX ..."},
    "constraint": {'"public"."Vote"."Vote_userId_fkey"': "FOREIGN KEY ... (NOT VALID)"},
    "event trigger": {'"ddl_audit"': "on ddl_command_end execute public.audit()"},
    "database": {"comment": "the voting database"},
}


def test_inventory_names_missing_extra_and_different_objects() -> None:
    """A dropped unique index, a validated-since constraint and an extra object are named."""
    restored = {
        "index": {'"public"."User"."other"': "CREATE INDEX ..."},
        "constraint": {'"public"."Vote"."Vote_userId_fkey"': "FOREIGN KEY ..."},
        "event trigger": dict(INVENTORY["event trigger"]),
        "database": {},
    }
    result = compare_inventories(INVENTORY, restored, None, None, superuser=True)
    problems = {(d.category, d.key, d.problem) for d in result.differences}
    assert problems == {
        ("index", '"public"."User"."User_email_key"', "missing"),
        ("index", '"public"."User"."other"', "extra"),
        ("constraint", '"public"."Vote"."Vote_userId_fkey"', "different"),
    }
    # the database comment is applied only by pg_restore --create: a warning, not a failure
    assert [(d.category, d.problem) for d in result.warnings] == [("database", "missing")]
    table = format_object_differences(result.differences)
    assert "User_email_key" in table and "missing after the restore" in table


def test_event_triggers_a_login_may_not_create_are_not_restorable_not_missing() -> None:
    """Without superuser, a missing event trigger is named as not restorable, not a failure."""
    restored = {k: dict(v) for k, v in INVENTORY.items()}
    restored["event trigger"] = {}
    result = compare_inventories(INVENTORY, restored, None, None, superuser=False)
    assert result.ok
    assert result.not_restorable == [("event trigger", '"ddl_audit"')]
    proof = Proof(
        compare_counts([t("Vote", 1, "1")], [t("Vote", 1, "1")]), result, login="verifier"
    )
    assert {"what": "event trigger", "count": 1, "reason": NOT_RESTORABLE} in proof.skipped()
    assert any('"ddl_audit"' in line and "superuser" in line for line in proof.notes())
    # the plaintext summary carries no names
    assert "ddl_audit" not in repr(proof.skipped())
    # with a superuser login, the same absence is a difference
    assert not compare_inventories(INVENTORY, restored, None, None, superuser=True).ok


def test_sequence_value_must_lie_between_before_and_after_the_dump() -> None:
    """A restored next value outside the source's values around the dump is a difference."""
    seqs = ({'"public"."Vote_id_seq"': 3001}, {'"public"."Vote_id_seq"': 3050})
    good = compare_inventories({}, {}, seqs, {'"public"."Vote_id_seq"': 3020}, superuser=True)
    assert good.ok and good.sequences_checked == 1
    bad = compare_inventories({}, {}, seqs, {'"public"."Vote_id_seq"': 42}, superuser=True)
    (diff,) = bad.differences
    assert (diff.category, diff.key, diff.problem) == (
        "sequence",
        '"public"."Vote_id_seq"',
        "value",
    )
    assert "3001..3050" in diff.describe() and "42" in diff.describe()


def test_lock_budget_names_the_setting_and_the_value() -> None:
    """Beyond the lock table, the problem names max_locks_per_transaction and a value to set."""
    assert lock_budget_problem(5000, 64, 122) is None
    problem = lock_budget_problem(9000, 64, 122)
    assert problem is not None
    assert (
        "max_locks_per_transaction" in problem and "9,000" in problem and "at least 111" in problem
    )


def test_content_scope_all_off_a_list_and_a_wrong_name() -> None:
    """verify.content picks what is fingerprinted; a name not in the dump scope is refused."""
    import pytest
    from pyrage import x25519

    from pg_backup.core.config import parse_config
    from pg_backup.core.counts import Relation
    from pg_backup.core.errors import ConfigError, DumpError
    from pg_backup.stages.dump import content_scope

    def cfg(content: object) -> object:
        target = {
            "source_conn_id": "s",
            "scratch_conn_id": "x",
            "storage": {"url": "file:///tmp/pgbt"},
            "encryption": {"recipients": [str(x25519.Identity.generate().to_public())]},
            "verify": {"content": content},
        }
        return parse_config({"targets": {"t": target}}).target("t")

    relations = [
        Relation(1, "public", "Vote", "table", True, 11, 100, ("id",)),
        Relation(2, "public", "User", "table", True, 12, 10, ("id",)),
    ]
    assert content_scope(cfg("all"), relations) == {("public", "Vote"), ("public", "User")}
    assert content_scope(cfg("off"), relations) == set()
    assert content_scope(cfg(["public.Vote"]), relations) == {("public", "Vote")}
    with pytest.raises(DumpError, match="public.Ballot"):
        content_scope(cfg(["public.Ballot"]), relations)
    with pytest.raises(ConfigError, match="verify.content"):
        cfg(["Vote"])
