"""Collector's Prometheus metrics.

Created against a registry passed in, so tests and several apps in one process never
collide in the global registry.  No label ever carries a user_id or an event_id: those
would make series cardinality unbounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_WRITE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric collector exports, grouped by the stage that updates it."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "collector") -> None:
        self.registry = registry
        ns = namespace
        # ingest and validation: valid + dead_lettered == consumed, per source
        self.consumed = Counter(
            "events_consumed", "Events consumed from raw topics (an unparseable message is one)",
            ["source"], namespace=ns, registry=registry,
        )
        self.valid = Counter(
            "events_valid", "Events that passed validation", ["source"],
            namespace=ns, registry=registry,
        )
        self.dead_lettered = Counter(
            "events_dead_lettered", "Dead-letter records written", ["source", "reason"],
            namespace=ns, registry=registry,
        )
        self.duplicates = Counter(
            "events_duplicate", "Valid events not counted again: their (user_id, event_id) "
            "was counted before (retries, replays)", ["source"],
            namespace=ns, registry=registry,
        )
        self.rerouted = Counter(
            "events_rerouted", "Valid events on a partition their user_id does not map to, "
            "produced again to the right one (counted there)", ["source"],
            namespace=ns, registry=registry,
        )
        self.messages = Counter(
            "raw_messages", "Raw Kafka messages consumed", ["source"],
            namespace=ns, registry=registry,
        )
        self.enrichment = Counter(
            "enrichment", "Enriched events by lookup outcome", ["outcome"],
            namespace=ns, registry=registry,
        )
        self.http_ingest = Counter(
            "http_ingest_events", "Events received over HTTP ingest", ["source", "result"],
            namespace=ns, registry=registry,
        )
        # windows
        self.window_updates = Counter(
            "window_updates", "Window updates", ["table"], namespace=ns, registry=registry
        )
        self.window_closes = Counter(
            "window_closes", "Windows closed", ["table"], namespace=ns, registry=registry
        )
        self.window_flushes = Counter(
            "window_flushes", "Flush cycles run, by what started them (timer; backlog: a "
            "drained backlog; quiet: the follow-up after the last events)", ["trigger"],
            namespace=ns, registry=registry,
        )
        self.late_events = Counter(
            "late_events", "Events past their window's allowed lateness", ["table"],
            namespace=ns, registry=registry,
        )
        # producing (dead letters, forwarding, changelogs, partials)
        self.produce_failures = Counter(
            "produce_failures", "Deliveries the broker refused (each is produced again)",
            ["topic"], namespace=ns, registry=registry,
        )
        self.produce_failing = Gauge(
            "produce_failing", "1 while a topic refuses the worker's writes", ["topic"],
            namespace=ns, registry=registry,
        )
        # sinks
        self.backpressure = Gauge(
            "backpressure_paused", "1 while raw partitions are paused for the sinks to drain",
            namespace=ns, registry=registry,
        )
        self.sink_rows = Counter(
            "sink_rows_written", "Rows written", ["sink"], namespace=ns, registry=registry
        )
        self.sink_failed = Counter(
            "sink_rows_failed", "Rows that failed to write", ["sink"],
            namespace=ns, registry=registry,
        )
        self.sink_retries = Counter(
            "sink_retries", "Write retries", ["sink"], namespace=ns, registry=registry
        )
        self.sink_latency = Histogram(
            "sink_write_seconds", "Sink batch write latency", ["sink"],
            buckets=_WRITE_BUCKETS, namespace=ns, registry=registry,
        )
        self.sink_healthy = Gauge(
            "sink_healthy", "1 when the sink's last write succeeded", ["sink"],
            namespace=ns, registry=registry,
        )
        self.e2e_latency = Histogram(
            "end_to_end_latency_seconds", "now - event ts when the sink writes",
            buckets=_LATENCY_BUCKETS, namespace=ns, registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag", "Fetch high watermark - committed offset", ["topic", "partition"],
            namespace=ns, registry=registry,
        )
        self.fetch_max_wait = Gauge(
            "kafka_fetch_max_wait_ms", "How long the broker may hold the worker's fetches "
            "that find no data: short while it keeps up, long while it drains a backlog",
            namespace=ns, registry=registry,
        )
