"""Readiness as a pure function of what the worker observed, so it can be unit-tested.

Ready means: table recovery completed, no rebalance in progress, no raw partition whose
commits have stalled while it lags, and no sink failing for longer than its threshold.
A worker that is alive but not progressing should leave a load balancer's rotation and
page someone, not sit there looking healthy.
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


def readiness(
    *,
    recovered: bool,
    rebalancing: bool,
    stalled: list[PartitionLag],
    sink_health: Mapping[str, Any],
    now: float,
    thresholds: Thresholds,
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
    sinks: dict[str, Any] = {}
    for name, health in sink_health.items():
        sinks[name] = dataclasses.asdict(health)
        since = health.failing_since
        if since is not None and now - since > thresholds.sink_failing_s:
            reasons.append(f"sink {name} failing for {now - since:.0f}s: {health.last_error}")
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "sinks": sinks,
        "stalled_partitions": [dataclasses.asdict(p) for p in stalled],
        "thresholds": dataclasses.asdict(thresholds),
    }
    return not reasons, body


__all__ = ["Thresholds", "readiness"]
