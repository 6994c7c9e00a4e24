"""Consumer lag, commit-stall readiness and the web view's summary (with the configured
aggregates it lists for the page), without Kafka."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from collector.adapters.consumer import consumer_offsets
from collector.config import load_settings
from collector.engine.delivery import TopicHealth
from collector.engine.specs import Specs
from collector.observability import Metrics
from collector.observability.health import Thresholds, readiness, sink_status
from collector.observability.lag import LagTracker, Offsets, PartitionLag, lag_of
from collector.observability.summary import RateHistory, Totals, build_summary, totals_of
from collector.sinks import SinkHealth
from collector.web.view import configured


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("offsets", "lag"),
    [
        (Offsets(highwater=500, committed=200, consumed=300), 300),  # committed, not consumed
        (Offsets(highwater=500, committed=None, consumed=450), 50),  # before the first commit
        (Offsets(highwater=500, committed=None, consumed=None), 500),
        (Offsets(highwater=None, committed=10, consumed=10), None),  # no fetch response yet
        (Offsets(highwater=5, committed=7, consumed=7), 0),  # never negative
    ],
)
def test_lag_is_fetch_highwater_minus_committed(offsets: Offsets, lag: int | None) -> None:
    assert lag_of(offsets) == lag


def test_stall_needs_lag_and_no_commit_progress() -> None:
    clock = Clock()
    tracker = LagTracker(clock)
    tp = ("collect.raw.web", 0)
    tracker.update({tp: Offsets(100, 50, 60)})
    clock.now += 30
    tracker.update({tp: Offsets(120, 50, 60)})
    assert tracker.stalled(20) == [PartitionLag("collect.raw.web", 0, 120, 50, 70, 30.0)]
    assert tracker.stalled(60) == []
    # the commit moves: progress, the clock restarts
    clock.now += 1
    tracker.update({tp: Offsets(120, 80, 90)})
    assert tracker.stalled(20) == []
    # caught up (lag 0) for a long time is not a stall either
    clock.now += 1
    tracker.update({tp: Offsets(80, 80, 80)})
    clock.now += 500
    tracker.update({tp: Offsets(80, 80, 80)})
    assert tracker.stalled(20) == [] and tracker.total == 0


def test_revoked_partitions_are_forgotten() -> None:
    clock = Clock()
    tracker = LagTracker(clock)
    tracker.update({("t", 0): Offsets(10, 0, 0), ("t", 1): Offsets(10, 0, 0)})
    clock.now += 100
    rows = tracker.update({("t", 1): Offsets(10, 0, 0)})
    assert [(p.topic, p.partition) for p in rows] == [("t", 1)]
    assert tracker.total == 10
    clock.now += 1
    tracker.update({("t", 0): Offsets(10, 0, 0), ("t", 1): Offsets(10, 0, 0)})
    assert [p.partition for p in tracker.stalled(50)] == [1]  # 0 came back: fresh clock


@dataclass(frozen=True)
class FakeTP:
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self) -> None:
        self._committed_offset = {FakeTP("t", 0): 40}
        self._read_offset = {FakeTP("t", 0): 44, FakeTP("t", 1): 9}

    def highwater(self, tp: FakeTP) -> int | None:
        if tp.partition == 2:
            raise RuntimeError("revoked")
        return {0: 50, 1: 12}.get(tp.partition)


def test_consumer_offsets_reads_faust_bookkeeping() -> None:
    tps = [FakeTP("t", 0), FakeTP("t", 1), FakeTP("t", 2)]
    assert consumer_offsets(FakeConsumer(), tps) == {
        ("t", 0): Offsets(50, 40, 45),
        ("t", 1): Offsets(12, None, 10),
        ("t", 2): Offsets(None, None, None),
    }


def _health(failing_since: float | None) -> SinkHealth:
    return SinkHealth(healthy=failing_since is None, failing_since=failing_since,
                      last_error=None if failing_since is None else "refused", pending=3,
                      last_success=None)


def test_readiness_reasons() -> None:
    thresholds = Thresholds(stall_s=120, sink_failing_s=60)
    ok, body = readiness(recovered=True, rebalancing=False, stalled=[],
                         sink_health={"mysql": _health(None)}, now=10_000, thresholds=thresholds)
    assert ok and body["ready"] and body["reasons"] == []

    stalled = [PartitionLag("collect.raw.web", 3, 900, 100, 800, 130.0)]
    ok, body = readiness(recovered=False, rebalancing=True, stalled=stalled,
                         sink_health={"mysql": _health(10_000 - 61),
                                      "influxdb": _health(10_000 - 59)},
                         now=10_000, thresholds=thresholds)
    assert not ok and body["ready"] is False
    reasons = body["reasons"]
    assert reasons[0] == "table recovery in progress" and reasons[1] == "rebalancing"
    assert "collect.raw.web[3]" in reasons[2] and "lag 800" in reasons[2]
    assert len(reasons) == 3  # a failing sink is not a readiness reason
    assert body["sinks"]["mysql"]["failing_since"] == 10_000 - 61
    assert body["stalled_partitions"][0]["lag"] == 800
    healthy, status = sink_status({"mysql": _health(10_000 - 61),
                                   "influxdb": _health(10_000 - 59)}, 10_000, thresholds)
    assert not healthy and len(status["reasons"]) == 1  # influxdb: not for long enough
    assert status["reasons"][0].startswith("sink mysql failing for 61s")


def test_a_topic_refusing_writes_makes_the_worker_unready() -> None:
    thresholds = Thresholds(stall_s=120, sink_failing_s=60, produce_failing_s=10)
    refused = {"collect.deadletter": TopicHealth(10_000 - 11, "KafkaError: refused", 4),
               "collect.enriched": TopicHealth(10_000 - 5, "KafkaError: slow", 1),
               "collect.partials": TopicHealth(None, "", 2)}
    ok, body = readiness(recovered=True, rebalancing=False, stalled=[], sink_health={},
                         now=10_000, thresholds=thresholds, producing=refused)
    assert not ok
    assert body["reasons"] == ["producing to collect.deadletter failing for 11s (its "
                               "partitions wait): KafkaError: refused"]
    assert set(body["producing"]) == {"collect.deadletter", "collect.enriched"}


def test_summary_is_shaped_from_the_counters() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.consumed.labels("web").inc(10)
    metrics.consumed.labels("mobile").inc(4)
    metrics.valid.labels("web").inc(8)
    metrics.valid.labels("mobile").inc(3)
    metrics.dead_lettered.labels("web", "malformed_json").inc(2)
    metrics.dead_lettered.labels("mobile", "schema_violation").inc(1)
    metrics.duplicates.labels("web").inc(1)
    metrics.enrichment.labels("hit").inc(9)
    metrics.enrichment.labels("miss").inc(2)
    metrics.sink_rows.labels("mysql").inc(5)
    metrics.window_updates.labels("event_stats").inc(7)
    history = RateHistory(window_s=10)
    history.add(Totals(100.0, 4, 1, {"malformed_json": 1}))
    history.add(Totals(105.0, 10, 2, {"malformed_json": 2}))
    now = totals_of(metrics, 110.0)
    assert now == Totals(110.0, 14, 3, {"malformed_json": 2, "schema_violation": 1})

    body = build_summary(metrics, now=now, history=history,
                         sink_health={"mysql": _health(None)},
                         lag=[PartitionLag("t", 0, 10, 4, 6, 0.0)], ready={"ready": True})
    assert body["totals"] == {"consumed": 14, "valid": 11, "dead_lettered": 3}
    assert body["by_source"] == {
        "mobile": {"consumed": 4, "valid": 3, "dead_lettered": 1, "duplicates": 0},
        "web": {"consumed": 10, "valid": 8, "dead_lettered": 2, "duplicates": 1},
    }
    assert body["dead_letters"] == {"malformed_json": 2, "schema_violation": 1}
    assert body["rates"]["events_per_s"] == pytest.approx(1.0)  # (14 - 4) / 10 s
    assert body["rates"]["dead_letters_per_s_by_reason"] == {
        "malformed_json": pytest.approx(0.1), "schema_violation": pytest.approx(0.1)}
    assert body["enrichment"]["hit_ratio"] == pytest.approx(9 / 11)
    assert body["enrichment"]["negative"] == 0
    assert body["windows"]["updates"] == {"event_stats": 7}
    assert body["sinks"]["mysql"]["rows_written"] == 5
    assert body["sinks"]["mysql"]["pending"] == 3
    assert body["lag"] == {"total": 6, "partitions": [
        {"topic": "t", "partition": 0, "highwater": 10, "committed": 4, "lag": 6,
         "stalled_for": 0.0}]}
    assert body["generated_at"].endswith("+00:00")


def test_rates_need_an_older_sample_within_the_window() -> None:
    history = RateHistory(window_s=10)
    now = Totals(100.0, 5, 0, {})
    assert history.rates(now)["events_per_s"] is None
    history.add(Totals(50.0, 0, 0, {}))  # too old
    assert history.rates(now)["events_per_s"] is None


def test_root_is_the_web_view_not_fausts_placeholder() -> None:
    from collector.adapters.web import Web
    from collector.config import load_settings
    from collector.factory import create_app

    web = create_app(load_settings()).web
    assert isinstance(web, Web)
    assert not any("production_index" in str(bp) for _, bp in web._enabled_blueprints())


def test_faust_sensors_use_our_registry() -> None:
    from faust.sensors.prometheus import PrometheusMonitor

    from collector.config import load_settings
    from collector.factory import create_app

    app = create_app(load_settings())
    assert isinstance(app.monitor, PrometheusMonitor)
    names = {m.name for m in app.runtime.registry.collect()}
    assert "faust_messages_received" in names and "collector_events_consumed" in names


def test_cached_faust_monitor_exports_what_fausts_does() -> None:
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
    from faust.types import TP

    from collector.adapters.sensors import monitor_for

    class Owner:
        pass

    class Stream:
        shortlabel = "Stream: Topic: collect.raw.web"
        task_owner = Owner()

    class Table:
        name = "collector-state"

    class Message:
        time_in = time_out = time_total = 0.0

    def drive(
        monitor: PrometheusMonitor, registry: CollectorRegistry
    ) -> dict[tuple[str, tuple[str, ...]], float]:
        stream, table, tp = Stream(), Table(), TP("collect.raw.web", 1)
        for offset in range(3):
            monitor.track_tp_end_offset(tp, 10 + offset)  # type: ignore[arg-type]
            monitor.on_message_in(tp, offset, Message())  # type: ignore[arg-type]
            state = monitor.on_stream_event_in(tp, offset, stream, object())  # type: ignore[arg-type]
            monitor.on_table_get(table, "k")  # type: ignore[arg-type]
            monitor.on_table_set(table, "k", 1)  # type: ignore[arg-type]
            monitor.on_stream_event_out(tp, offset, stream, object(), state)  # type: ignore[arg-type]
            monitor.on_message_out(tp, offset, Message())  # type: ignore[arg-type]
        monitor.on_send_initiated(object(), "collect.enriched", object(), 1, 1)  # type: ignore[arg-type]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in registry.collect() for s in family.samples
                if not s.name.endswith(("_created", "_sum", "_bucket", "_count"))}

    plain_registry, registry = CollectorRegistry(), CollectorRegistry()
    plain = drive(PrometheusMonitor(metrics=FaustMetrics.create(plain_registry, "faust")),
                  plain_registry)
    cached_monitor = monitor_for(registry)  # counts per message, publishes on collect
    assert drive(cached_monitor, registry) == plain
    assert plain[("faust_messages_received_total", ())] == 3
    assert plain[("faust_topic_partition_end_offset",
                  (("partition", "1"), ("topic", "collect.raw.web")))] == 12
    # a rebalance removes the per-partition series: cached children must not outlive them
    cached_monitor._clear_partition_related_metrics()
    cached_monitor.on_message_in(TP("collect.raw.web", 1), 7, Message())  # type: ignore[arg-type]
    value = registry.get_sample_value("faust_messages_received_per_topics_partition",
                                      {"topic": "collect.raw.web", "partition": "1"})
    assert value == 7
    # counted per message, published on collect: a message read before a rebalance
    # counts, and its partition's series goes with the others
    cached_monitor.on_message_in(TP("collect.raw.web", 2), 9, Message())  # type: ignore[arg-type]
    cached_monitor._clear_partition_related_metrics()
    assert registry.get_sample_value("faust_messages_received_per_topics_partition",
                                      {"topic": "collect.raw.web", "partition": "2"}) is None
    assert registry.get_sample_value("faust_messages_received_total") == 5
    assert registry.get_sample_value("faust_active_messages") == 2  # two never acked


def test_partitions_held_by_backpressure_are_not_stalled() -> None:
    """A sink outage pauses the raw partitions on purpose: commits stop, lag grows, and
    the worker must stay ready (the full-size MySQL outage run went unready for 10 min)."""
    clock = Clock()
    tracker = LagTracker(clock)
    held, free = ("collect.raw.web", 0), ("collect.raw.web", 1)
    tracker.update({held: Offsets(100, 50, 60), free: Offsets(100, 50, 60)}, held=[held])
    for _ in range(10):
        clock.now += 60
        tracker.update({held: Offsets(200, 50, 60), free: Offsets(200, 50, 60)},
                       held=[held])
    assert [p.partition for p in tracker.stalled(120)] == [1]
    # resumed: timed from the resume, not from the last commit ten minutes ago
    clock.now += 5
    tracker.update({held: Offsets(200, 50, 60), free: Offsets(200, 50, 60)})
    assert [p.partition for p in tracker.stalled(10)] == [1]
    clock.now += 200
    tracker.update({held: Offsets(200, 50, 60), free: Offsets(200, 50, 60)})
    assert [p.partition for p in tracker.stalled(120)] == [0, 1]  # a real stall again


def test_the_summary_lists_the_configured_aggregates_for_the_page() -> None:
    """The web view learns from the summary which aggregates are configured, their kind
    (a session one is asked per user), keys and measures; the built-ins are not listed
    (they have cards of their own)."""
    assert configured(Specs.from_settings(load_settings(aggregates={}))) == []
    settings = load_settings(aggregates={
        "plans": {"group_by": "source,properties.plan", "window": "hopping",
                  "size_seconds": 300, "step_seconds": 60,
                  "measures": "count,sum(value),users=distinct(user_id)"},
        "buys": {"window": "session", "gap_seconds": 600,
                 "measures": "count,revenue=sum(properties.amount)"}})
    assert configured(Specs.from_settings(settings)) == [
        {"name": "buys", "window": "session", "window_seconds": 600, "keys": ["user_id"],
         "measures": ["first_ts", "last_ts", "count", "revenue"],
         "path": "/api/v1/aggregates/buys"},
        {"name": "plans", "window": "hopping", "window_seconds": 300,
         "keys": ["source", "properties_plan"],
         "measures": ["count", "sum_value", "users", "users_truncated"],
         "path": "/api/v1/aggregates/plans"}]


def test_runs_of_messages_count_as_each_message_would() -> None:
    """Direct delivery tells the monitor about a partition's run of messages in one call
    (``on_messages_in``/``on_messages_out``): the published series and Faust's own
    monitor counts must equal what one call per message gives."""
    from faust.types import TP

    from collector.adapters.direct import batch_monitor
    from collector.adapters.sensors import monitor_for

    class Message:
        def __init__(self, offset: int) -> None:
            self.offset = offset
            self.time_in = self.time_out = self.time_total = None

    tps = [TP("collect.raw.web", 0), TP("collect.raw.web", 1), TP("collect.raw.mobile", 0)]
    runs = {tp: [Message(o) for o in range(10 * i, 10 * i + 4 + i)] for i, tp in enumerate(tps)}

    def snapshot(registry: CollectorRegistry, monitor: Any) -> tuple[Any, ...]:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in registry.collect() for s in family.samples
                   if not s.name.endswith(("_created", "_sum", "_bucket", "_count"))}
        return (samples, monitor.messages_received_total, monitor.messages_active,
                dict(monitor.messages_received_by_topic), dict(monitor.tp_read_offsets))

    one, each = CollectorRegistry(), CollectorRegistry()
    by_message, by_run = monitor_for(each), monitor_for(one)
    for tp, run in runs.items():
        for message in run:
            by_message.on_message_in(tp, message.offset, message)
        by_run.on_messages_in(tp, run)
    acked = [(tps[0], m) for m in runs[tps[0]]] + [(tps[2], m) for m in runs[tps[2]][:2]]
    for tp, message in acked:  # some acked, the rest still active
        by_message.on_message_out(tp, message.offset, message)
    by_run.on_messages_out(len(acked))
    assert snapshot(one, by_run) == snapshot(each, by_message)
    assert by_run.messages_active == sum(map(len, runs.values())) - len(acked) == 9

    # only when the monitor is the app's only sensor: another sensor sees every message
    app = SimpleNamespace(monitor=by_run, sensors=[by_run])
    assert batch_monitor(app) is by_run
    app.sensors = [by_run, object()]
    assert batch_monitor(app) is None
    assert batch_monitor(SimpleNamespace(monitor=object(), sensors=[])) is None
