"""The bench machinery end to end on a tiny database, so CI proves `make bench` still works.

The real benchmark (0.25/1/4 GB, repeated) is `make bench`, not part of `make test`.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER

pytestmark = pytest.mark.integration


def test_bench_runs_every_scenario_on_a_tiny_database(pg_server, tmp_path, capsys):
    """Build a tiny voting database, run every scenario once, get report, chart and ratios."""
    from tests.benchmarks import bench

    db = f"pgb_bench_smoke_{uuid.uuid4().hex[:8]}"
    common = ["--host", PG_HOST, "--port", str(PG_PORT), "--user", PG_USER]
    out = tmp_path / "results"
    try:
        assert bench.main([*common, "data", "--size", "tiny", "--votes", "2000", "--db", db]) == 0
        assert (
            bench.main(
                [*common, "run", "--size", "tiny", "--repeat", "1", "--db", db, "--out", str(out)]
            )
            == 0
        )
    finally:
        bench.Pg(PG_HOST, PG_PORT, PG_USER).drop(db)

    doc = json.loads((out / "results.json").read_text())
    rows = {r["scenario"]: r for r in doc["sizes"][0]["results"]}
    assert set(rows) == set(bench.LABELS)
    for name, row in rows.items():
        assert row["wall"] > 0 and row["cpu"] >= 0, name
    assert [p["label"] for p in rows["D"]["parts"]] == list(bench.STAGES)
    assert rows["D"]["output_bytes"] > 0 and rows["A"]["output_bytes"] > 0
    assert rows["D-j2"]["notes"]["dump_format"] == "directory"
    assert rows["D"]["notes"]["dump_format"] == "custom"
    # every stage process reported its own peak RSS, pg_dump's backend was seen by database
    assert all(p["extra"]["self_hwm"] > 0 for p in rows["D"]["parts"])
    assert rows["F"]["parts"][0]["extra"]["self_hwm"] > 0
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "D(file) / A" in report
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "work").exists()
    # the ratios come last
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("E-ours-j2 / E-ours") or "(info)" in printed[-1]
    assert any(line.startswith("D(file) / C") for line in printed[-15:])


def test_level_sweep_samples_the_whole_dump_not_its_head(tmp_path):
    """The sample takes equal slices from the start, the middle and the end of the dump."""
    from tests.benchmarks.bench import sweep_sample

    dump = tmp_path / "db.dump"
    dump.write_bytes(b"".join(bytes([i]) * 1000 for i in range(10)))  # ten 1000-byte runs
    sample = sweep_sample(dump, total=400, slices=4)
    assert len(sample) == 400
    assert sample[:100] == bytes([0]) * 100 and sample[-100:] == bytes([9]) * 100
    assert {sample[100], sample[200]} == {3, 6}
    assert sweep_sample(dump, total=20_000) == dump.read_bytes()  # small dumps whole


def test_the_report_names_the_first_zstd_level_that_would_meet_the_size_target():
    """Each level's artifact ratio is scaled from the default level's measured one."""
    from tests.benchmarks.report import _level_needed

    sweep = {
        "sample_bytes": 64_000_000,
        "levels": [
            {"level": 1, "bytes": 1000, "seconds": 0.2},
            {"level": 1, "long": True, "bytes": 990, "seconds": 0.5},
            {"level": 9, "bytes": 930, "seconds": 2.0},
            {"level": 12, "bytes": 880, "seconds": 4.0},
        ],
    }
    text = _level_needed(sweep, ratio=1.0)
    assert "level 12 (about 0.88×)" in text and "16 MB/s" in text and "320 MB/s" in text
    none = _level_needed(sweep, ratio=1.1)
    assert none.startswith("no zstd level reaches it") and "level 12" in none
    assert "about 0.97×" in none


def _size(label: str, walls: dict[str, float], path: dict[str, float]) -> dict:
    """One size's results: a run of each scenario, G with its tasks one after another."""
    from datetime import datetime, timedelta

    at, tasks = datetime(2026, 1, 1), {}
    for task, seconds in path.items():
        tasks[task] = {
            "start": at.isoformat(),
            "end": (at + timedelta(seconds=seconds)).isoformat(),
        }
        at += timedelta(seconds=seconds + 1)  # one second between tasks
    rows = [{"scenario": n, "rep": 1, "wall": w, "notes": {}} for n, w in walls.items()]
    rows[-1]["notes"]["tasks"] = tasks
    return {"size": label, "db_bytes": 1e9, "results": rows}


def test_the_report_splits_g_overhead_into_what_every_run_pays_and_the_rest():
    """Measured on G's longest path: a size whose budget the per-run part alone exceeds is
    told apart from one over budget by the work that grows with the data."""
    from tests.benchmarks.report import Size, _g_fixed

    def size(label: str, floor: float, dump: float, restore: float, verify: float) -> Size:
        path = {"preflight": 1, "dump": dump, "restore": restore, "verify": verify}
        path["mark_verified"] = 1
        g = sum(path.values()) + 4 + 2  # 4 gaps of 1 s, 2 s before the first task
        return Size(_size(label, {"C": dump, "R": floor - dump, "G": g}, path))

    # Every run pays preflight 1 + mark_verified 1 + gaps 4 + before 2 = 8 s.
    text = "\n".join(
        _g_fixed(
            [
                size(
                    "small", 20, dump=2, restore=18, verify=1
                ),  # over by 9 s, budget 3 s: 8 s per run
                size(
                    "mid", 80, dump=10, restore=72, verify=2
                ),  # over by 12 s, budget 12 s: met at the limit
                size("big", 160, dump=20, restore=146, verify=4),  # over by 18 s, budget 24 s
            ]
        )
    )
    rows = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert rows["| small"].startswith("| small | 20.0 | 3.0 | 9.0 | 8.0 | 1.0 | missed: the")
    assert rows["| small"].endswith("part every run pays is over the budget by itself |")
    assert rows["| mid"] == "| mid | 80.0 | 12.0 | 12.0 | 8.0 | 4.0 | met |"
    assert rows["| big"] == "| big | 160.0 | 24.0 | 18.0 | 8.0 | 10.0 | met |"
    tight = _g_fixed([size("tight", 60, dump=10, restore=55, verify=4)])
    assert "| tight | 60.0 | 9.0 | 17.0 | 8.0 | 9.0 | missed by 8.0 s |" in tight
    assert _g_fixed([Size(_size("no G", {"C": 1.0, "R": 2.0}, {}))]) == []


def test_restore_settings_restores_once_per_setting_and_drops_what_it_made(make_db, tmp_path):
    """Each setting reaches pg_restore's sessions (a bad one fails the run), nothing is left."""
    from tests.benchmarks import restore_settings
    from tests.conftest import psql

    made = "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgb_bench_settings_%'"
    before = psql(made)
    db = make_db("pgb_bench_rs")
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)", db)
    common = ["--host", PG_HOST, "--port", str(PG_PORT), "--user", PG_USER, "--db", db]
    out = tmp_path / "rs.json"
    settings = ["--setting", "", "--setting", "maintenance_work_mem=128MB"]
    assert restore_settings.main([*common, "--repeat", "1", *settings, "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == ["", "maintenance_work_mem=128MB"]
    assert all(len(times) == 1 and times[0] > 0 for times in runs.values())
    with pytest.raises(subprocess.CalledProcessError, match="pg_restore"):
        restore_settings.main(
            [*common, "--repeat", "1", "--setting", "no_such=1", "--out", str(out)]
        )
    assert psql(made) == before
