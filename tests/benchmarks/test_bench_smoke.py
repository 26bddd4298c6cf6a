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


def _size(label: str, gb: float, walls: dict[str, float]) -> dict:
    rows = [{"scenario": n, "rep": 1, "wall": w, "notes": {}} for n, w in walls.items()]
    return {"size": label, "db_bytes": gb * 1e9, "results": rows}


def test_the_report_splits_g_overhead_into_a_part_per_run_and_a_part_per_gb():
    """Fitted through the sizes: a size whose budget the per-run part alone exceeds is told
    apart from one over budget by its per-GB part, and the size the target is met from is
    where the two lines cross."""
    from tests.benchmarks.report import Size, _g_fixed

    # G - (C + R) = 6 s + 4 s/GB exactly; C + R = 40 s per GB, so the budget is 6 s per GB.
    sizes = [
        Size(_size(label, gb, {"C": 10 * gb, "R": 30 * gb, "G": 40 * gb + 6 + 4 * gb}))
        for label, gb in (("0.5G", 0.5), ("2G", 2.0), ("4G", 4.0))
    ]
    text = "\n".join(_g_fixed(sizes))
    assert "G − (C + R) = 6.0 s + 4.00 s per GB" in text
    rows = {ln.split(" | ")[0]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert rows["| 0.5G"].startswith("| 0.5G | 20.0 | 3.0 | 8.0 | 6.0 | missed: the part every")
    assert rows["| 0.5G"].endswith("is over the budget by itself |")
    assert rows["| 2G"] == "| 2G | 80.0 | 12.0 | 14.0 | 6.0 | missed by 2.0 s |"
    assert rows["| 4G"] == "| 4G | 160.0 | 24.0 | 22.0 | 6.0 | met |"
    assert "met from about 3.0 GB up" in text
    # Each GB adding more than its budget: missed at every size, whatever the fixed part.
    steep = [
        Size(_size(label, gb, {"C": 10 * gb, "R": 30 * gb, "G": 40 * gb + 8 * gb}))
        for label, gb in (("1G", 1.0), ("4G", 4.0))
    ]
    assert "missed at every size" in "\n".join(_g_fixed(steep))
    assert _g_fixed(sizes[:1]) == []


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
