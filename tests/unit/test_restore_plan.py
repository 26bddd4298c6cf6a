"""How a table of contents is split for reading the tables while indexes are built.

The lines are pg_restore --list lines as PostgreSQL 15 prints them.
"""

from __future__ import annotations

from pg_backup.adapters.pg_restore import PostDataPlan, plan_post_data

PRE_AND_DATA = """\
;
; Archive created at 2026-11-30 18:00:00 UTC
;
215; 1259 16385 TABLE public votes postgres
216; 1259 16390 SEQUENCE public votes_id_seq postgres
3350; 0 16385 TABLE DATA public votes postgres
3360; 0 0 SEQUENCE SET public votes_id_seq postgres
"""

POST = """\
3200; 2606 16437 CONSTRAINT public votes votes_pkey postgres
3201; 1259 16458 INDEX public votes_at_idx postgres
3202; 0 0 INDEX ATTACH public votes_2026_at_idx postgres
3203; 2606 16460 FK CONSTRAINT public votes votes_user_fkey postgres
3204; 2620 16470 TRIGGER public votes audit_votes postgres
3205; 2618 16471 RULE public votes no_delete postgres
3206; 3381 16472 STATISTICS public votes_stats postgres
3207; 0 0 ROW SECURITY public votes postgres
3208; 3256 16473 POLICY public votes only_mine postgres
3209; 0 0 COMMENT public INDEX votes_at_idx postgres
3210; 6104 16474 PUBLICATION - pub postgres
3211; 3466 16475 EVENT TRIGGER - ddl_audit postgres
"""


def lines(*texts: str) -> list[str]:
    return [line for text in texts for line in text.splitlines() if line and line[0] != ";"]


def test_keys_first_then_indexes_beside_the_rest_after_and_event_triggers_last() -> None:
    """Keys and rules lock readers out: before the reading; what never blocks it: beside."""
    plan = plan_post_data(PRE_AND_DATA + POST, POST)
    assert isinstance(plan, PostDataPlan)
    assert [line.split(";")[0] for line in plan.first if line[0] != ";"] == [
        "215",
        "216",
        "3350",
        "3360",
    ]
    assert [line.split(";")[0] for line in plan.keys] == ["3200", "3205"]
    assert [line.split(";")[0] for line in plan.beside] == ["3201", "3202", "3203", "3204", "3206"]
    assert [line.split(";")[0] for line in plan.after] == ["3207", "3208", "3209", "3210"]
    assert [line.split(";")[0] for line in plan.triggers] == ["3211"]
    # every entry in exactly one run
    runs = plan.first + plan.keys + plan.beside + plan.after + plan.triggers
    assert sorted(lines("\n".join(runs))) == sorted(lines(PRE_AND_DATA, POST))


def test_a_materialized_view_refresh_means_no_work_beside_naming_it() -> None:
    refresh = "3220; 0 16480 MATERIALIZED VIEW DATA public totals postgres\n"
    why = plan_post_data(PRE_AND_DATA + POST + refresh, POST + refresh)
    assert isinstance(why, str)
    assert "MATERIALIZED VIEW DATA public totals" in why and "may run code that writes" in why


def test_an_entry_of_an_unknown_kind_means_no_work_beside_naming_it() -> None:
    for entry in (
        "3230; 2606 16490 CHECK CONSTRAINT public votes votes_positive postgres\n",
        "3231; 0 0 SOMETHING NEW public votes x postgres\n",
    ):
        why = plan_post_data(PRE_AND_DATA + POST + entry, POST + entry)
        assert isinstance(why, str) and "not planned for" in why
        assert entry.split(" ", 3)[3].split(" public")[0] in why


def test_a_dump_without_post_data_has_nothing_beside() -> None:
    plan = plan_post_data(PRE_AND_DATA, "")
    assert isinstance(plan, PostDataPlan)
    assert (plan.keys, plan.beside, plan.after, plan.triggers) == ([], [], [], [])
    assert len(lines("\n".join(plan.first))) == 4
