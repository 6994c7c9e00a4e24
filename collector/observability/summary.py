"""The JSON summary behind the web view, shaped from the same counters as ``/metrics``.

Reading the Prometheus counters (rather than keeping a second set of totals) means the
page, the summary and a Prometheus scrape can never disagree.  Rates come from a short
history of totals sampled by the runtime, so every viewer sees the same number.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from collector.observability.lag import PartitionLag
from collector.observability.metrics import Metrics

ENRICHMENT_OUTCOMES = ("hit", "miss", "negative", "degraded")


def counter_values(metric: MetricWrapperBase) -> dict[tuple[str, ...], float]:
    """Label values -> current value of a (labelled) counter."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counts at one moment (``at`` is UTC epoch seconds)."""

    at: float
    consumed: float
    dead_lettered: float
    dead_by_reason: Mapping[str, float]


def totals_of(metrics: Metrics, at: float) -> Totals:
    by_reason: dict[str, float] = {}
    for (_source, reason), value in counter_values(metrics.dead_lettered).items():
        by_reason[reason] = by_reason.get(reason, 0.0) + value
    return Totals(at, sum(counter_values(metrics.consumed).values()),
                  sum(by_reason.values()), by_reason)


class RateHistory:
    """A bounded history of totals; rates are taken over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0, maxlen: int = 120) -> None:
        self.window_s = window_s
        self._samples: deque[Totals] = deque(maxlen=maxlen)

    def add(self, totals: Totals) -> None:
        self._samples.append(totals)

    def rates(self, now: Totals) -> dict[str, Any]:
        """Per-second rates between the oldest sample within the window and ``now``."""
        base = None
        for sample in self._samples:
            if now.at - sample.at <= self.window_s and sample.at < now.at:
                base = sample
                break
        if base is None:
            return {"events_per_s": None, "dead_letters_per_s": None,
                    "dead_letters_per_s_by_reason": {}, "window_s": 0.0}
        span = now.at - base.at
        by_reason = {
            reason: max(0.0, value - base.dead_by_reason.get(reason, 0.0)) / span
            for reason, value in now.dead_by_reason.items()
        }
        return {
            "events_per_s": max(0.0, now.consumed - base.consumed) / span,
            "dead_letters_per_s": max(0.0, now.dead_lettered - base.dead_lettered) / span,
            "dead_letters_per_s_by_reason": by_reason,
            "window_s": span,
        }


def _by_source(metrics: Metrics) -> dict[str, dict[str, float]]:
    sources: dict[str, dict[str, float]] = {}

    def row(source: str) -> dict[str, float]:
        return sources.setdefault(source, {"consumed": 0.0, "valid": 0.0, "dead_lettered": 0.0,
                                           "duplicates": 0.0})

    for (source,), value in counter_values(metrics.consumed).items():
        row(source)["consumed"] = value
    for (source,), value in counter_values(metrics.valid).items():
        row(source)["valid"] = value
    for (source, _reason), value in counter_values(metrics.dead_lettered).items():
        row(source)["dead_lettered"] += value
    for (source,), value in counter_values(metrics.duplicates).items():
        row(source)["duplicates"] = value
    return dict(sorted(sources.items()))


def _by_table(metrics: Metrics) -> dict[str, dict[str, float]]:
    return {
        "updates": {t: v for (t,), v in counter_values(metrics.window_updates).items()},
        "closes": {t: v for (t,), v in counter_values(metrics.window_closes).items()},
        "late": {t: v for (t,), v in counter_values(metrics.late_events).items()},
    }


def _sinks(metrics: Metrics, health: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    written = counter_values(metrics.sink_rows)
    failed = counter_values(metrics.sink_failed)
    retries = counter_values(metrics.sink_retries)
    out: dict[str, dict[str, Any]] = {}
    for name, state in sorted(health.items()):
        is_record = dataclasses.is_dataclass(state) and not isinstance(state, type)
        row = dataclasses.asdict(state) if is_record else dict(state)
        row.update(rows_written=written.get((name,), 0.0), rows_failed=failed.get((name,), 0.0),
                   retries=retries.get((name,), 0.0))
        out[name] = row
    return out


def build_summary(
    metrics: Metrics,
    *,
    now: Totals,
    history: RateHistory,
    sink_health: Mapping[str, Any],
    lag: list[PartitionLag],
    ready: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the web view shows, for this worker (counters are per process)."""
    enrichment = {o: 0.0 for o in ENRICHMENT_OUTCOMES}
    enrichment.update({o: v for (o,), v in counter_values(metrics.enrichment).items()})
    lookups = sum(enrichment.values())
    valid = sum(counter_values(metrics.valid).values())
    return {
        "generated_at": datetime.fromtimestamp(now.at, UTC).isoformat(),
        "generated_at_ms": int(now.at * 1000),
        "totals": {"consumed": now.consumed, "valid": valid,
                   "dead_lettered": now.dead_lettered},
        "by_source": _by_source(metrics),
        "dead_letters": dict(sorted(now.dead_by_reason.items())),
        "rates": history.rates(now),
        # hit ratio: events answered from Redis, out of all enriched events
        "enrichment": {**enrichment, "hit_ratio": enrichment["hit"] / lookups if lookups else None},
        "windows": _by_table(metrics),
        "sinks": _sinks(metrics, sink_health),
        "lag": {"total": sum(p.lag or 0 for p in lag),
                "partitions": [dataclasses.asdict(p) for p in lag]},
        "ready": dict(ready) if ready is not None else None,
    }


__all__ = ["RateHistory", "Totals", "build_summary", "counter_values", "totals_of"]
