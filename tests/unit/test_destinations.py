"""Several destinations (3-2-1): the config forms, and retention planned per destination."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pg_backup.adapters.catalog import Inventory, SetRecord
from pg_backup.core.config import TargetConfig, parse_config
from pg_backup.core.errors import ConfigError, SweepRefused
from pg_backup.core.names import stage_of_task, upload_task_id
from pg_backup.stages.runtime import Runtime
from pg_backup.stages.sweep import plan, policy_of
from tests.unit.test_retention import histories

REPO = Path(__file__).resolve().parents[2]
KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
BASE: dict[str, Any] = {
    "source_conn_id": "voting_db",
    "scratch_conn_id": "scratch",
    "encryption": {"recipients": [KEY]},
}


def target(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> TargetConfig:
    return parse_config(
        {"defaults": defaults or {}, "targets": {"voting": {**BASE, **doc}}}
    ).target("voting")


def problem(doc: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        target(doc, defaults)
    return str(info.value)


# --- config ------------------------------------------------------------------------------


def test_one_storage_block_is_one_destination_named_default() -> None:
    """`storage:` alone: one destination `default`, the task id stays `upload`, storage unchanged."""
    cfg = target({"storage": {"url": "file:///srv/b", "storage_class": "STANDARD_IA"}})
    assert [d.name for d in cfg.destinations] == ["default"]
    assert not cfg.multi_destination
    assert type(cfg.storage).__name__ == "StorageConfig"
    assert cfg.storage.url == cfg.destinations[0].url == "file:///srv/b"
    assert cfg.destinations[0].storage_class == "STANDARD_IA"
    assert upload_task_id("default", cfg.multi_destination) == "upload"
    assert Runtime(cfg).at("default").cfg is cfg


def test_destinations_each_with_their_own_store_options_and_retention() -> None:
    """Each destination keeps its own URL, connection, options; retention overrides the target's key by key."""
    cfg = target(
        {
            "retention": {"daily": 5, "min_verified": 2},
            "destinations": [
                {"name": "nas", "url": "file:///mnt/nas/pg", "retention": {"daily": 7}},
                {
                    "name": "offsite",
                    "url": "s3://offsite-backups/pg",
                    "aws_conn_id": "aws_offsite",
                    "sse_kms_key_id": "alias/pg",
                    "object_lock": {"mode": "COMPLIANCE", "days": 30},
                    "retention": {"daily": 7, "weekly": 4, "monthly": 12},
                },
                {"name": "cloud", "url": "s3://cloud-backups/pg"},
            ],
        }
    )
    assert [d.name for d in cfg.destinations] == ["nas", "offsite", "cloud"]
    assert cfg.multi_destination and cfg.storage.url == "file:///mnt/nas/pg"
    nas, offsite, cloud = (cfg.for_destination(n) for n in ("nas", "offsite", "cloud"))
    assert (nas.retention.daily, nas.retention.min_verified) == (7, 2)
    assert offsite.storage.aws_conn_id == "aws_offsite"
    assert (
        offsite.storage.object_lock is not None and offsite.storage.object_lock.mode == "COMPLIANCE"
    )
    assert (offsite.retention.weekly, offsite.retention.monthly) == (4, 12)
    assert cloud.retention == cfg.retention  # no retention of its own: the target's
    assert upload_task_id("offsite", True) == "upload_offsite"
    assert stage_of_task("upload_offsite") == stage_of_task("upload")


def test_a_target_form_wins_over_the_other_form_in_defaults() -> None:
    """defaults.storage and a target's destinations (or the reverse) are not both set."""
    cfg = target(
        {
            "destinations": [
                {"name": "nas", "url": "file:///a"},
                {"name": "off", "url": "file:///b"},
            ]
        },
        defaults={"storage": {"url": "file:///default"}},
    )
    assert [d.url for d in cfg.destinations] == ["file:///a", "file:///b"]
    cfg = target(
        {"storage": {"url": "file:///own"}},
        defaults={"destinations": [{"name": "nas", "url": "file:///a"}]},
    )
    assert [d.name for d in cfg.destinations] == ["default"]


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (
            {"storage": {"url": "file:///a"}, "destinations": [{"name": "b", "url": "file:///b"}]},
            ["targets.voting", "storage and destinations are both set", "keep one"],
        ),
        ({"destinations": []}, ["destinations is empty", "add at least one"]),
        ({}, ["storage is missing", "destinations"]),
        (
            {
                "destinations": [
                    {"name": "a", "url": "file:///a"},
                    {"name": "a", "url": "file:///b"},
                ]
            },
            ["destinations[1].name 'a' is used twice", "its own name"],
        ),
        (
            {"destinations": [{"name": "Off Site", "url": "file:///a"}]},
            ["destinations.0", "not a destination name", "a-z, 0-9 and _"],
        ),
        (
            {"destinations": [{"name": "a", "url": "ftp://x"}]},
            ["destinations.0.url", "s3:// or file://"],
        ),
        ({"destinations": [{"url": "file:///a"}]}, ["destinations.0", "required field"]),
    ],
)
def test_bad_destinations_name_the_field_and_the_fix(
    doc: dict[str, Any], needles: list[str]
) -> None:
    """Every mistake in the destination forms names the field and what to do."""
    message = problem(doc)
    for needle in needles:
        assert needle in message, message


def test_unknown_destination_lists_those_there_are() -> None:
    """`--from tape` (or a drill param) on a target without it names the destinations."""
    cfg = target(
        {"destinations": [{"name": "nas", "url": "file:///a"}, {"name": "off", "url": "file:///b"}]}
    )
    with pytest.raises(ConfigError, match="no destination 'tape': use one of nas, off"):
        cfg.destination("tape")


def test_example_3_2_1_layout_validates() -> None:
    """The commented 3-2-1 target of the example config validates as three destinations."""
    text = (REPO / "dags" / "pg_backup.example.yaml").read_text()
    block = re.search(r"# >>> 3-2-1\n(.*?)# <<< 3-2-1", text, re.S)
    assert block is not None
    doc = yaml.safe_load(
        "\n".join(line.removeprefix("  # ") for line in block.group(1).splitlines())
    )
    ((name, body),) = doc.items()
    cfg = parse_config(
        {
            "targets": {
                name: {**body, "scratch_conn_id": "scratch", "encryption": {"recipients": [KEY]}}
            }
        }
    ).target(name)
    assert len(cfg.destinations) == 3 and cfg.multi_destination
    assert sum(d.url.startswith("s3://") for d in cfg.destinations) >= 1  # one copy off the site
    assert len({cfg.for_destination(d.name).retention for d in cfg.destinations}) >= 2


# --- retention per destination -----------------------------------------------------------

retentions = st.fixed_dictionaries(
    {
        "daily": st.integers(0, 10),
        "weekly": st.integers(0, 6),
        "monthly": st.integers(0, 14),
        "min_verified": st.integers(1, 5),
        "max_delete_fraction": st.sampled_from([0.2, 0.5, 1.0]),
        "grace_days": st.integers(0, 5),
    }
)
NAMES = ("nas", "cloud", "offsite")


def record(s: Any, status: str) -> SetRecord:
    return SetRecord(
        backup_id=s.backup_id,
        prefix=f"voting/{s.backup_id}/",
        taken_at=s.taken_at.isoformat(),
        kind=s.kind,
        status=status,  # type: ignore[arg-type]
        keep_days=s.keep_days,
        keys=[f"voting/{s.backup_id}/manifest.json"],
        bytes=1,
    )


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.lists(retentions, min_size=3, max_size=3),
    st.data(),
    st.integers(0, 800 * 1440),
)
def test_each_destination_keeps_exactly_its_own_plan(
    sets: list[Any], own: list[dict[str, Any]], data: st.DataObject, minutes: int
) -> None:
    """Generated histories, each destination holding its own subset under its own policy: each plans with exactly its own policy, and its newest verified set is never deleted."""
    cfg = target(
        {
            "destinations": [
                {"name": name, "url": f"file:///srv/{name}", "retention": r}
                for name, r in zip(NAMES, own, strict=True)
            ]
        }
    )
    as_of = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    rt = Runtime(cfg)
    for name, retention in zip(NAMES, own, strict=True):
        # A destination misses sets whose upload failed there; the rest it holds as they are.
        held = [s for s in sets if data.draw(st.booleans(), label=f"{name} holds {s.backup_id}")]
        found = Inventory(sets=[record(s, s.status) for s in held], objects=len(held))
        dest = rt.at(name)
        policy = policy_of(dest.cfg)
        assert (policy.daily, policy.weekly, policy.monthly) == (
            retention["daily"],
            retention["weekly"],
            retention["monthly"],
        )
        assert (policy.min_verified, policy.grace_days) == (
            retention["min_verified"],
            retention["grace_days"],
        )
        try:
            planned = plan(dest, found, as_of, force=False)
        except SweepRefused:
            continue  # a refused plan deletes nothing there
        deleted = {s["backup_id"] for s in planned["sets"] if not s["keep"]}
        verified = [s for s in held if s.status == "verified"]
        if verified:
            newest = max(verified, key=lambda s: s.taken_at)
            assert newest.backup_id not in deleted, (name, newest.backup_id)
        assert len([s for s in verified if s.backup_id not in deleted]) >= min(
            retention["min_verified"], len(verified)
        )


# --- the run's view of its destinations ---------------------------------------------------


def test_check_names_each_destination_without_the_set_and_the_task_to_clear() -> None:
    """check_destinations fails naming the missing destination, its task and who holds the set."""
    from pg_backup.core import layout
    from pg_backup.core.errors import StorageError
    from pg_backup.core.records import UploadResult
    from pg_backup.stages.destinations import check_held

    cfg = target(
        {"destinations": [{"name": "nas", "url": "file:///a"}, {"name": "off", "url": "file:///b"}]}
    )
    run = layout.RunInfo(
        target="voting",
        kind="scheduled",
        backup_id="voting_20260101T020000Z_scheduled",
        taken_at="2026-01-01T02:00:00+00:00",
        dag_id="pg_backup_voting",
        run_id="scheduled__2026-01-01T02:00:00+00:00",
        staging="/tmp/none",
    )
    done = UploadResult(
        location="file:///a/x", data_bytes=1, data_sha256="0" * 64, destination="nas"
    )
    assert check_held(Runtime(cfg, run), {"nas": done.to_xcom(), "off": done.to_xcom()}) == [
        "nas",
        "off",
    ]
    with pytest.raises(StorageError) as info:
        check_held(Runtime(cfg, run), {"nas": done.to_xcom(), "off": None})
    message = str(info.value)
    for needle in (
        "not in destination(s) off",
        "upload_off failed",
        "held by: nas",
        "clear upload_off",
    ):
        assert needle in message, message


def test_staging_bucket_is_reached_through_one_connection_for_every_destination() -> None:
    """staging_url goes through the first destination's connection (or staging_aws_conn_id), whichever destination a task serves."""
    from pg_backup.adapters.run_staging import staging_store

    dests = [
        {"name": "nas", "url": "file:///srv/nas"},
        {"name": "cloud", "url": "s3://bucket-one/p", "aws_conn_id": "aws_cloud"},
        {"name": "offsite", "url": "s3://bucket-two/p", "aws_conn_id": "aws_offsite"},
    ]
    cfg = target({"destinations": dests, "staging_url": "s3://stage/runs"})
    first = cfg.destinations[0].aws_conn_id
    for name in ("nas", "cloud", "offsite"):
        served = Runtime(cfg).at(name).cfg
        assert served.storage.name == name
        assert served.staging_connection == first, name
        assert staging_store(served).aws_conn_id == first, name
    own = target(
        {"destinations": dests, "staging_url": "s3://stage/runs", "staging_aws_conn_id": "stg"}
    )
    assert {Runtime(own).at(d["name"]).cfg.staging_connection for d in dests} == {"stg"}
