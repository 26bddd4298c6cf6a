"""What the Backups page shows for a target: the catalog index plus Airflow's run facts.

One GET of ``<target>/catalog.json`` per target (never a listing), two queries for the runs that
made the sets, one for the next scheduled run. Everything shown comes from the index (what
``manifest.json`` and ``verification.json`` may show) or from Airflow's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from pg_backup.adapters.catalog_index import read_index
from pg_backup.adapters.storage import open_storage
from pg_backup.core import catalog_index as ci
from pg_backup.core.catalog_index import CatalogIndex, DrillRun, SetEntry
from pg_backup.core.config import TargetConfig
from pg_backup.core.errors import PgBackupError
from pg_backup.core.names import Stage, backup_dag_id
from pg_backup.core.recipes import restore_commands
from pg_backup.web import airflow_db
from pg_backup.web.charts import bar_chart

STAGES = [s.value for s in Stage]


def human_age(age: timedelta) -> str:
    """``45 s``, ``12 min``, ``5 h 3 min``, ``2 d 4 h``."""
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 60:
        return f"{minutes} min"
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def human_duration(value: timedelta) -> str:
    """A configured duration the way the config file writes it: ``2 h``, ``26 h``, ``7 d``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def human_bytes(count: int | None) -> str:
    """``812 B``, ``3.4 MB``, ``1.2 GB`` (decimal units, like the storage consoles)."""
    if count is None:
        return "–"
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


def run_href(root: str, dag_id: str | None, run_id: str | None) -> str | None:
    """The Airflow UI's page of a DAG run (below the api-server's root path)."""
    if not dag_id or not run_id:
        return None
    return f"{root}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def verification_label(entry: SetEntry) -> str:
    """The set's proof in a few words; a foreign or damaged set says so first.

    ``counts + content + objects`` (what was proven), ``failed: N relation(s) differ``,
    ``not verified``, ``incomplete``, ``held, damaged: ...``, ``held, not ours: ...``.
    """
    if entry.status == "incomplete":
        return "incomplete"
    if entry.foreign:
        return f"held, not ours: {entry.foreign}"
    if entry.problems:
        return f"held, damaged: {'; '.join(entry.problems)}"
    if entry.verification is None:
        return "not verified"
    if entry.verification.status == "failed":
        return f"failed: {entry.verification.mismatches} relation(s) differ"
    return " + ".join(entry.verification.proof) or "verified"


def fate_label(entry: SetEntry) -> tuple[str, str]:
    """(what the newest sweep decided, until when), or why there is no decision yet."""
    fate = entry.retention
    if fate is None:
        return "not planned yet", "newer than the last sweep"
    if not fate.keep:
        verb = "would be deleted (dry run)" if fate.dry_run else "deleted by the sweep"
        return verb, f"on {fate.expires_on}" if fate.expires_on else "–"
    rules = ", ".join(fate.rules)
    until = "no end date yet"
    if fate.expires_on:
        until = (
            f"expires {fate.expires_on}" if fate.expires_exact else f"not before {fate.expires_on}"
        )
    return f"kept: {rules}", until


@dataclass
class Row:
    """One set as a table row."""

    entry: SetEntry
    age: str
    verification: str
    fate: str
    expires: str
    stages: dict[str, float]
    run_seconds: float | None
    run_state: str | None
    run_href: str | None
    drill_href: str | None
    commands: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """The row for ``/api``: the index entry plus what the page derives."""
        return {
            **self.entry.model_dump(mode="json"),
            "stored_bytes": self.entry.stored_bytes,
            "age": self.age,
            "verification_label": self.verification,
            "fate": self.fate,
            "expires": self.expires,
            "stage_seconds": self.stages,
            "run_seconds": self.run_seconds,
            "run_state": self.run_state,
            "run_href": self.run_href,
            "drill_href": self.drill_href,
            "restore_commands": self.commands,
        }


@dataclass
class TargetView:
    """One target's section of the page."""

    name: str
    sla: timedelta
    limit: timedelta
    problem: str | None = None
    index: CatalogIndex | None = None
    rows: list[Row] = field(default_factory=list)
    newest: SetEntry | None = None
    newest_age: str = "–"
    freshness: ci.Freshness = "none"
    last_drill: DrillRun | None = None
    last_drill_href: str | None = None
    next_backup: airflow_db.NextRun | None = None
    size_chart: str = ""
    duration_chart: str = ""

    def to_json(self) -> dict[str, Any]:
        """The target for ``/api``."""
        return {
            "target": self.name,
            "problem": self.problem,
            "headline": {
                "newest_verified": self.newest.backup_id if self.newest else None,
                "newest_verified_age": self.newest_age,
                "freshness": self.freshness,
                "sla_seconds": self.sla.total_seconds(),
                "freshness_limit_seconds": self.limit.total_seconds(),
                "last_drill": self.last_drill.model_dump(mode="json") if self.last_drill else None,
                "next_backup_at": (
                    self.next_backup.at.isoformat()
                    if self.next_backup and self.next_backup.at
                    else None
                ),
                "backup_dag_paused": self.next_backup.paused if self.next_backup else None,
            },
            "catalog": (
                {"built_at": self.index.built_at, "updated_at": self.index.updated_at}
                if self.index
                else None
            ),
            "sets": [r.to_json() for r in self.rows],
        }


def load_index(cfg: TargetConfig) -> tuple[CatalogIndex | None, str | None]:
    """The target's index (one GET), or why there is none."""
    try:
        index = read_index(open_storage(cfg.storage), cfg.name)
    except PgBackupError as exc:
        return None, f"the catalog index could not be read: {exc.summary}"
    if index is None:
        return None, (
            "no catalog index in storage yet: the next backup, drill or retention sweep writes "
            f"it, or run `pg-backup catalog {cfg.name} --rebuild` now"
        )
    return index, None


def _stage_seconds(entry: SetEntry, facts: airflow_db.RunFacts | None) -> dict[str, float]:
    if facts is not None and facts.stages:
        return {s: facts.stages[s] for s in STAGES if s in facts.stages}
    if entry.verification is not None:  # the run is gone from Airflow: what storage recorded
        return {
            Stage.RESTORE.value: entry.verification.restore_seconds,
            Stage.VERIFY.value: entry.verification.verify_seconds,
        }
    return {}


def target_views(configs: list[TargetConfig], root: str, now: datetime) -> list[TargetView]:
    """Every given target's view: its index, its runs' facts and its next backup."""
    views = []
    loaded = {cfg.name: load_index(cfg) for cfg in configs}
    runs = {
        (s.dag_id, s.run_id)
        for index, _ in loaded.values()
        if index
        for s in index.sets
        if s.dag_id and s.run_id
    }
    facts = airflow_db.run_facts(runs)
    upcoming = airflow_db.next_runs(backup_dag_id(c.name) for c in configs)
    for cfg in configs:
        index, problem = loaded[cfg.name]
        view = TargetView(
            name=cfg.name,
            sla=cfg.sla,
            limit=cfg.retention.freshness,
            problem=problem,
            index=index,
            next_backup=upcoming.get(backup_dag_id(cfg.name)),
        )
        views.append(view)
        if index is None:
            continue
        for entry in index.sets:
            fact = facts.get((entry.dag_id or "", entry.run_id or ""))
            fate, expires = fate_label(entry)
            view.rows.append(
                Row(
                    entry=entry,
                    age=human_age(now - entry.taken),
                    verification=verification_label(entry),
                    fate=fate,
                    expires=expires,
                    stages=_stage_seconds(entry, fact),
                    run_seconds=fact.seconds if fact else None,
                    run_state=fact.state if fact else None,
                    run_href=run_href(root, entry.dag_id, entry.run_id),
                    drill_href=(
                        run_href(root, entry.drill.dag_id, entry.drill.run_id)
                        if entry.drill
                        else None
                    ),
                    commands=restore_commands(
                        cfg.name,
                        entry.backup_id,
                        entry.destinations[0].location if entry.destinations else "",
                        entry.data_sha256,
                        entry.dump_format,
                        as_it_was=entry.as_it_was,
                    ),
                )
            )
        view.newest = ci.newest_verified(index)
        age = now - view.newest.taken if view.newest else None
        view.newest_age = human_age(age) if age is not None else "–"
        view.freshness = ci.freshness(age, cfg.sla, cfg.retention.freshness)
        view.last_drill = index.drills[0] if index.drills else None
        if view.last_drill:
            view.last_drill_href = run_href(root, view.last_drill.dag_id, view.last_drill.run_id)
        oldest_first = list(reversed(view.rows))
        view.size_chart = bar_chart(
            [
                (r.entry.backup_id, r.entry.stored_bytes / 1e6 if r.entry.destinations else None)
                for r in oldest_first
            ],
            "Stored size",
            "MB",
        )
        # Only runs Airflow still knows: a part of a run would pass for a fast one.
        view.duration_chart = bar_chart(
            [(r.entry.backup_id, r.run_seconds) for r in oldest_first], "Run duration", "s"
        )
    return views


def metric_samples(
    configs: list[TargetConfig], now: datetime
) -> list[tuple[str, str, dict[str, str], float]]:
    """Every metric of the given targets: ``(target, name, extra labels, value)``.

    From the catalog index (one GET per target, never a listing), the config (limits) and the
    task durations of the run that made the newest verified set (Airflow's metadata).
    """
    out: list[tuple[str, str, dict[str, str], float]] = []
    newest: dict[str, SetEntry] = {}
    for cfg in configs:
        index, _ = load_index(cfg)
        out.append((cfg.name, "catalog_present", {}, 1.0 if index else 0.0))
        out.append((cfg.name, "sla_seconds", {}, cfg.sla.total_seconds()))
        out.append(
            (cfg.name, "freshness_limit_seconds", {}, cfg.retention.freshness.total_seconds())
        )
        if index is None:
            continue
        out += [
            (cfg.name, name, labels, value) for name, labels, value in ci.metric_values(index, now)
        ]
        verified = ci.newest_verified(index)
        if verified is not None:
            newest[cfg.name] = verified
    facts = airflow_db.run_facts(
        (s.dag_id, s.run_id) for s in newest.values() if s.dag_id and s.run_id
    )
    for target, entry in newest.items():
        stages = _stage_seconds(entry, facts.get((entry.dag_id or "", entry.run_id or "")))
        out += [
            (target, "stage_duration_seconds", {"stage": stage}, seconds)
            for stage, seconds in stages.items()
        ]
    return out
