"""The Prometheus text exposition of the catalog metrics (``prometheus_client`` renders it).

Every metric is a gauge named ``pg_backup_<name>`` with a ``target`` label. The values come from
``core.catalog_index.metric_values`` (the same numbers the tasks send to StatsD/OpenTelemetry),
the target's config (limits) and the run that made the newest verified set (stage durations).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

HELP = {
    "catalog_present": "1 when the target's catalog index could be read, else 0",
    "catalog_updated_timestamp_seconds": "When the catalog index was last written (Unix time)",
    "newest_verified_timestamp_seconds": "When the newest verified backup set was taken",
    "newest_verified_age_seconds": "Age of the newest verified backup set at scrape time",
    "newest_verified_stored_bytes": "Bytes stored for the newest verified set",
    "newest_verified_dump_bytes": "Bytes of the newest verified set's uncompressed dump",
    "newest_drilled_timestamp_seconds": "When the newest set that passed a restore drill was taken",
    "newest_drilled_age_seconds": "Age of the newest set that passed a restore drill",
    "last_drill_timestamp_seconds": "When the last restore drill ran",
    "last_drill_passed": "1 when the last restore drill passed, else 0",
    "stored_bytes": "Bytes stored for every set of the target",
    "sets": "Backup sets in storage by status",
    "sets_held": "Sets held for a human: damaged, or not provably this deployment's",
    "stage_duration_seconds": "Duration of each stage of the run that made the newest verified set",
    "sla_seconds": "The target's SLA: queued to verified",
    "freshness_limit_seconds": "Age of the newest verified set above which the sweep alerts",
}

Sample = tuple[str, str, dict[str, str], float]  # target, name, extra labels, value


class _Samples:
    def __init__(self, samples: Iterable[Sample]):
        self.samples = list(samples)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for target, name, labels, value in self.samples:
            family = families.get(name)
            if family is None:
                family = families[name] = GaugeMetricFamily(
                    f"pg_backup_{name}", HELP[name], labels=["target", *labels]
                )
            family.add_metric([target, *labels.values()], value)
        yield from families.values()

    def describe(self) -> list[Any]:
        return []


def render(samples: Iterable[Sample]) -> bytes:
    """The text exposition format (version 0.0.4) of the samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples))  # type: ignore[arg-type]
    return generate_latest(registry)
