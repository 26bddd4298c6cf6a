""" "Is this the source?" from what the servers report: every combination of evidence."""

from __future__ import annotations

import pytest

from pg_backup.core.identity import TargetFacts, judge
from pg_backup.core.manifest import SourceIdentity

SOURCE = SourceIdentity(
    system_identifier="7713907075412158577", port=5432, database="voting", database_oid=16384
)


def facts(
    sysid: str | None = "7713907075412158577",
    port: int = 5432,
    database: str = "voting",
    oid: int | None = 16384,
    probe: bool | None = None,
) -> TargetFacts:
    return TargetFacts(sysid, port, database, oid, probe)


@pytest.mark.parametrize(
    ("target", "live", "expected"),
    [
        # The source's own session is listed there: the same server, whatever else says.
        pytest.param(facts(probe=True), True, True, id="probe-seen-same-oid"),
        pytest.param(facts(sysid=None, probe=True), True, True, id="probe-seen-no-sysid"),
        pytest.param(facts(oid=99, probe=True), True, False, id="probe-seen-other-db"),
        # System identifier and port: the same cluster (or a copy of it, refused as well).
        pytest.param(facts(probe=False), True, True, id="same-sysid-port-no-probe"),
        pytest.param(facts(), False, True, id="recorded-same-oid"),
        pytest.param(facts(sysid="1", probe=False), True, False, id="other-sysid"),
        pytest.param(facts(port=5433, probe=False), True, False, id="same-sysid-other-port"),
        # No system identifier on one side: the probe decides, else nothing can be told.
        pytest.param(facts(sysid=None, probe=False), True, False, id="no-sysid-probe-missed"),
        pytest.param(facts(sysid=None, probe=None), True, None, id="no-sysid-no-probe"),
        pytest.param(facts(sysid=None), False, None, id="recorded-no-sysid"),
        # Nothing to destroy where the database does not exist.
        pytest.param(facts(oid=None), True, False, id="no-such-database"),
        # A recorded identity may be older than a re-created source: its name is refused too.
        pytest.param(facts(oid=20000), False, True, id="recorded-name-new-oid"),
        pytest.param(facts(database="other", oid=20000), False, False, id="recorded-other-db"),
        pytest.param(facts(oid=20000), True, False, id="live-same-name-other-oid-cannot-be"),
    ],
)
def test_judge(target: TargetFacts, live: bool, expected: bool | None) -> None:
    """Each kind of evidence gives the right verdict, and says how it was reached."""
    verdict = judge(SOURCE, target, live=live)
    assert verdict.is_source is expected, verdict.why
    assert verdict.why


def test_unknown_source_is_unknown_unless_nothing_exists() -> None:
    """Without any identity of the source only a missing database is provably safe."""
    assert judge(None, facts(), live=True).is_source is None
    assert judge(None, facts(oid=None), live=True).is_source is False
