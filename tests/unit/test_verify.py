"""Tests for pg_backup.core.counts.compare_counts: exact counts, matview tolerance, readable output."""

from __future__ import annotations

from pg_backup.core.counts import (
    LARGE_OBJECTS,
    Difference,
    TableCount,
    compare_counts,
    format_differences,
)


def t(name: str, rows: int, schema: str = "public") -> TableCount:
    return TableCount(schema, name, "table", rows)


def mv(name: str, rows: int, schema: str = "public") -> TableCount:
    return TableCount(schema, name, "matview", rows)


def lo(rows: int) -> TableCount:
    return TableCount("", LARGE_OBJECTS, "large_objects", rows)


SNAPSHOT = [t("User", 1200), t("Vote", 50_000), t("Candidate", 12), mv("tally", 12), lo(3)]


def test_equal_counts_are_ok() -> None:
    """Identical counts (in any order) give no difference and no warning."""
    result = compare_counts(SNAPSHOT, list(reversed(SNAPSHOT)))
    assert result.ok
    assert result.differences == []
    assert result.warnings == []
    assert result.checked == len(SNAPSHOT)
    assert result.rows == 1200 + 50_000 + 12 + 12 + 3


def test_different_count_is_a_difference() -> None:
    """One row fewer in one table fails the comparison and names that table."""
    restored = [t("User", 1200), t("Vote", 49_999), t("Candidate", 12), mv("tally", 12), lo(3)]
    result = compare_counts(SNAPSHOT, restored)
    assert not result.ok
    assert result.differences == [Difference('"public"."Vote"', 50_000, 49_999)]


def test_missing_relation_is_a_difference() -> None:
    """A relation absent after restore is a difference with restored=None."""
    restored = [c for c in SNAPSHOT if c.name != "Candidate"]
    result = compare_counts(SNAPSHOT, restored)
    assert not result.ok
    assert result.differences == [Difference('"public"."Candidate"', 12, None)]


def test_extra_relation_is_a_difference() -> None:
    """A relation present only after restore is a difference with expected=None."""
    restored = [*SNAPSHOT, t("AuditLog", 0, schema="audit")]
    result = compare_counts(SNAPSHOT, restored)
    assert not result.ok
    assert result.differences == [Difference('"audit"."AuditLog"', None, 0)]
    assert result.checked == len(SNAPSHOT)


def test_same_name_in_other_schema_is_not_a_match() -> None:
    """Relations match by (schema, name): a table moved to another schema is missing + extra."""
    result = compare_counts([t("Vote", 5)], [t("Vote", 5, schema="archive")])
    assert {(d.label, d.expected, d.restored) for d in result.differences} == {
        ('"public"."Vote"', 5, None),
        ('"archive"."Vote"', None, 5),
    }


def test_matview_count_difference_is_a_warning() -> None:
    """A refreshed materialized view with another row count warns but does not fail."""
    restored = [t("User", 1200), t("Vote", 50_000), t("Candidate", 12), mv("tally", 13), lo(3)]
    result = compare_counts(SNAPSHOT, restored)
    assert result.ok
    assert result.differences == []
    assert result.warnings == [Difference('"public"."tally"', 12, 13)]


def test_missing_matview_is_a_difference() -> None:
    """A materialized view that did not come back at all is a real difference."""
    restored = [c for c in SNAPSHOT if c.kind != "matview"]
    result = compare_counts(SNAPSHOT, restored)
    assert not result.ok
    assert result.differences == [Difference('"public"."tally"', 12, None)]


def test_large_object_count_difference_is_a_difference() -> None:
    """Large objects lost in the restore fail the comparison."""
    restored = [*SNAPSHOT[:-1], lo(2)]
    result = compare_counts(SNAPSHOT, restored)
    assert not result.ok
    assert result.differences == [Difference(LARGE_OBJECTS, 3, 2)]
    assert result.warnings == []


def test_unpopulated_matview_rows_not_counted() -> None:
    """An unpopulated matview (rows -1) matches itself and adds nothing to the row total."""
    snapshot = [t("User", 10), mv("stale", -1)]
    result = compare_counts(snapshot, list(snapshot))
    assert result.ok
    assert result.rows == 10


def test_format_differences_shows_every_label_and_missing() -> None:
    """The table lists every relation, both counts, and 'missing' for absent sides."""
    items = [
        Difference('"public"."Vote"', 50_000, 49_999),
        Difference('"public"."Candidate"', 12, None),
        Difference('"audit"."AuditLog"', None, 7),
        Difference(LARGE_OBJECTS, 3, 2),
    ]
    text = format_differences(items)
    lines = text.splitlines()
    assert len(lines) == 1 + len(items)
    assert lines[0].split() == ["relation", "what", "snapshot", "restored"]
    for item, line in zip(items, lines[1:], strict=True):
        assert line.startswith(item.label)
    assert "50,000" in lines[1]
    assert "49,999" in lines[1]
    assert lines[2].split()[-1] == "missing"
    assert lines[3].split()[-2] == "missing"
    assert lines[3].split()[-1] == "7"
    # Fixed width: the count columns line up.
    assert len({len(line) for line in lines}) == 1
