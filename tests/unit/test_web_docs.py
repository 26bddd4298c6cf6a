"""What the README promises about the metrics matches what the endpoint serves."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pg_backup.core import catalog_index as ci
from pg_backup.web.prometheus import HELP, render
from tests.conftest import REPO

NOW = datetime(2026, 11, 30, tzinfo=UTC)


def served() -> set[str]:
    return {f"pg_backup_{name}" for name in HELP}


def test_readme_alert_rules_name_only_served_metrics():
    """Every metric in the README's example alert rules exists on /pg-backup/metrics."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- alert-rules:", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"\bpg_backup_[a-z_]+\b", block))
    assert named and named <= served(), named - served()
    table = readme.split("| metric (gauge, label `target`) | what |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`(pg_backup_[a-z_]+)", table)) <= served()


def test_every_computed_metric_has_help_and_renders():
    """Each name metric_values can produce is documented in HELP and renders as a gauge."""
    index = ci.empty("voting", NOW)
    names = {name for name, _, _ in ci.metric_values(index, NOW)}
    assert names <= set(HELP)
    text = render(
        [("voting", name, labels, value) for name, labels, value in ci.metric_values(index, NOW)]
    )
    assert b'pg_backup_sets{status="verified",target="voting"} 0.0' in text
    assert b"# TYPE pg_backup_stored_bytes gauge" in text
