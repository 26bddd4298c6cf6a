"""What the content proof costs: counts only against counts + fingerprints, side by side.

    python -m tests.benchmarks.proof_cost --db pgb_bench_1g --repeat 3

On an existing database (``make bench-data SIZE=1G`` builds the 1.1 GB voting one), each
repetition measures, interleaved so that a noisy neighbour hits both alike:

  source read   every table scanned in one snapshot: count(*) alone, then count + fingerprint
  dump stage    the real dump stage (pg_dump + the reads under its snapshot + the inventory),
                with verify.content: off, then all
  verification  the proof of one restore of the dump: counts + objects, then + content

and prints the medians, the extra seconds and the ratios (fingerprint run / counts-only run);
the raw numbers go to ``bench-results/proof-cost.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.integration.proofkit import dump, endpoint, sql


def source_read(db: str, fingerprint: bool) -> float:
    """Seconds to scan every table of ``db`` in one snapshot, with or without fingerprints."""
    from psycopg import IsolationLevel

    from pg_backup.core.counts import list_relations, measure
    from pg_backup.core.fingerprint import session_options

    with endpoint(db).connect(options=session_options()) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        cur = conn.cursor()
        relations = list_relations(cur, [], [])
        started = time.monotonic()
        for relation in relations:
            measure(cur, relation, fingerprint)
        seconds = time.monotonic() - started
        conn.rollback()
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Measure and print; exit 0."""
    from pyrage import x25519

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the database to measure (left unchanged)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="bench-results/proof-cost.json")
    args = parser.parse_args(argv)
    recipient = str(x25519.Identity.generate().to_public())
    runs: dict[str, list[float]] = {key: [] for key in KEYS}
    restored = f"pgb_proofcost_{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="pgb-proofcost-") as tmp:
        work = Path(tmp)
        try:
            last: Any = None
            for rep in range(args.repeat):
                # alternate which variant goes first from one repetition to the next
                for fingerprint in (False, True) if rep % 2 == 0 else (True, False):
                    tag = "fp" if fingerprint else "counts"
                    runs[f"read_{tag}"].append(source_read(args.db, fingerprint))
                    started = time.monotonic()
                    dumped = dump(
                        args.db,
                        work / f"{tag}{rep}",
                        recipient,
                        verify={"content": "all" if fingerprint else "off"},
                    )
                    runs[f"dump_{tag}"].append(time.monotonic() - started)
                    if fingerprint:
                        last = dumped
                    print(
                        f"rep {rep} {tag}: read {runs[f'read_{tag}'][-1]:.1f} s, "
                        f"dump {runs[f'dump_{tag}'][-1]:.1f} s",
                        flush=True,
                    )
            target = last.restore(restored)
            counts_only = dict(
                last.doc,
                relations=[
                    {k: v for k, v in r.items() if k != "fingerprint"}
                    for r in last.doc["relations"]
                ],
            )
            counts_only.pop("fingerprint", None)
            for rep in range(args.repeat):
                for fingerprint in (False, True) if rep % 2 == 0 else (True, False):
                    from pg_backup.stages.verify import prove_database

                    started = time.monotonic()
                    proof = prove_database(
                        target, last.doc if fingerprint else counts_only, last.rt.cfg
                    )
                    runs["verify_fp" if fingerprint else "verify_counts"].append(
                        time.monotonic() - started
                    )
                    assert proof.ok, proof.report()
        finally:
            sql(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')
    report = summarize(runs)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"db": args.db, "runs": runs}, indent=2))
    return 0


KEYS = ("read_counts", "read_fp", "dump_counts", "dump_fp", "verify_counts", "verify_fp")


def summarize(runs: dict[str, list[float]]) -> str:
    """The markdown table: medians, extra seconds and ratios."""
    lines = [
        "| what | counts only (s) | + fingerprints (s) | extra (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for what, key in (
        ("source read (all tables, one snapshot)", "read"),
        ("dump stage (pg_dump + reads + inventory)", "dump"),
        ("verification of the restore", "verify"),
    ):
        base = statistics.median(runs[f"{key}_counts"])
        more = statistics.median(runs[f"{key}_fp"])
        lines.append(
            f"| {what} | {base:.1f} | {more:.1f} | {more - base:+.1f} | {more / base:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
