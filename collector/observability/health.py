"""Readiness as a pure function of what the worker observed, so it can be unit-tested.

Ready means: table recovery completed, no rebalance in progress, no raw partition whose
commits have stalled while it lags, and no topic refusing the worker's writes for longer
than its threshold.  A worker that is alive but not progressing should leave a load
balancer's rotation and page someone, not sit there looking healthy.

A failing sink is not a readiness reason: every worker shares the sink, so a MySQL
outage made every worker unready and Kubernetes dropped all ingest and query traffic
although Kafka was fine.  Rows wait in the state (and backpressure holds the raw
partitions); :func:`sink_status` serves ``/healthz/sinks`` and the metrics alert on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.observability.lag import PartitionLag


@dataclass(frozen=True, slots=True)
class Thresholds:
    stall_s: float
    sink_failing_s: float
    produce_failing_s: float = 10.0


def readiness(
    *,
    recovered: bool,
    rebalancing: bool,
    stalled: list[PartitionLag],
    sink_health: Mapping[str, Any],
    now: float,
    thresholds: Thresholds,
    producing: Mapping[str, Any] | None = None,
) -> tuple[bool, dict[str, Any]]:
    """``(ready, body)``; ``now`` is UTC epoch seconds, like ``SinkHealth.failing_since``."""
    reasons: list[str] = []
    if not recovered:
        reasons.append("table recovery in progress")
    if rebalancing:
        reasons.append("rebalancing")
    for p in stalled:
        reasons.append(
            f"commits stalled on {p.topic}[{p.partition}] for {p.stalled_for:.1f}s "
            f"with lag {p.lag} (threshold {thresholds.stall_s:g}s)"
        )
    refused: dict[str, Any] = {}
    for topic, health in (producing or {}).items():
        since = health.failing_since
        if since is None:
            continue
        refused[topic] = dataclasses.asdict(health)
        if now - since > thresholds.produce_failing_s:
            reasons.append(f"producing to {topic} failing for {now - since:.0f}s "
                           f"(its partitions wait): {health.last_error}")
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "producing": refused,
        "sinks": {name: dataclasses.asdict(h) for name, h in sink_health.items()},
        "stalled_partitions": [dataclasses.asdict(p) for p in stalled],
        "thresholds": dataclasses.asdict(thresholds),
    }
    return not reasons, body


def sink_status(sink_health: Mapping[str, Any], now: float, thresholds: Thresholds
                ) -> tuple[bool, dict[str, Any]]:
    """``(healthy, body)`` for ``/healthz/sinks``: unhealthy once a sink has been
    failing for ``sink_failing_s``."""
    reasons = []
    for name, health in sink_health.items():
        since = health.failing_since
        if since is not None and now - since > thresholds.sink_failing_s:
            reasons.append(f"sink {name} failing for {now - since:.0f}s: {health.last_error}")
    return not reasons, {"healthy": not reasons, "reasons": reasons,
                         "sinks": {n: dataclasses.asdict(h) for n, h in sink_health.items()}}


__all__ = ["Thresholds", "readiness", "sink_status"]
