"""Faust's Prometheus sensor, in our registry, with its per-message label lookups cached.

faust's ``PrometheusMonitor`` resolves labelled children (``metric.labels(...)``) and
normalises the stream name with a regex for every message and event: measured at about
12 µs per message over Faust's default monitor (2.5 µs), a tenth of what a message costs
Faust.  This subclass resolves each child once (about 7 µs over the default) and keeps
it until a rebalance clears the per-partition series (faust removes them then, so a
cached child would update a series nobody exports).

The per-message updates (messages received, active messages, per topic and per
partition, the partition's high watermark) were still locked Prometheus operations per
message, about 5% of the worker's CPU with one event per message (issue 17): they are
now counted in plain Python and published when the registry is collected (a scrape),
see :func:`monitor_for`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry


class CachedPrometheusMonitor(PrometheusMonitor):
    """``PrometheusMonitor`` with the same series, cheaper per message."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics=metrics, **kwargs)
        self._labelled: dict[tuple[Any, ...], Any] = {}
        #: not yet published: messages in, messages out, per topic, (topic, partition) ->
        #: the last offset read
        self._in = self._out = 0
        self._in_by_topic: dict[str, int] = {}
        self._offsets: dict[tuple[str, int], int] = {}
        self._ends: dict[tuple[str, int], int] = {}  # (topic, partition) -> high watermark
        #: (table name, operation) -> table operations not yet published
        self._table_ops: dict[tuple[str, str], int] = {}

    def publish(self) -> None:
        """Apply the per-message counts to the Prometheus series (before a scrape)."""
        m = self._metrics
        if self._in:
            m.messages_received.inc(self._in)
        if self._in != self._out:
            m.active_messages.inc(self._in - self._out)
        self._in = self._out = 0
        by_topic, self._in_by_topic = self._in_by_topic, {}
        for topic, n in by_topic.items():
            self._child(m.messages_received_per_topics, topic).inc(n)
        offsets, self._offsets = self._offsets, {}
        for (topic, partition), offset in offsets.items():
            self._child(m.messages_received_per_topics_partition, topic, partition).set(offset)
        ends, self._ends = self._ends, {}
        for (topic, partition), offset in ends.items():
            self._child(m.topic_partition_end_offset, topic, partition).set(offset)
        ops, self._table_ops = self._table_ops, {}
        for (name, operation), n in ops.items():
            self._child(m.table_operations, f"table.{name}", operation).inc(n)

    def _child(self, metric: Any, *labels: Any) -> Any:
        key = (id(metric), *labels)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(*labels)
        return child

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        self._in += 1
        topic = tp.topic
        self._in_by_topic[topic] = self._in_by_topic.get(topic, 0) + 1
        self._offsets[(topic, tp.partition)] = offset

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_out(self, tp, offset, message)
        self._out += 1

    def on_messages_in(self, tp: Any, messages: list[Any]) -> None:
        """:meth:`on_message_in` for a fetched run of one partition's messages, in
        offset order (direct delivery): the same counts, one update per run.  The
        messages' ``time_in`` is left unset: only ``on_message_out`` reads it, to set a
        ``time_total`` that nothing reads."""
        n = len(messages)
        topic, last = tp.topic, messages[-1].offset
        self.messages_received_total += n
        self.messages_active += n
        self.messages_received_by_topic[topic] += n
        self.tp_read_offsets[tp] = last
        self._in += n
        self._in_by_topic[topic] = self._in_by_topic.get(topic, 0) + n
        self._offsets[(topic, tp.partition)] = last

    def on_messages_out(self, n: int) -> None:
        """:meth:`on_message_out` for ``n`` acked messages of a direct batch."""
        self.messages_active -= n
        self._out += n

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        """Per fetched message (Faust's getmany): the high watermark gauge, published on
        collect like the counts (its locked ``set`` was 1.2% of single-mode samples)."""
        Monitor.track_tp_end_offset(self, tp, offset)
        self._ends[(tp.topic, tp.partition)] = offset

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        m = self._metrics
        m.total_events.inc()
        m.total_active_events.inc()
        child = self._labelled.get(("stream", stream))
        if child is None:
            label = f"stream.{self._stream_label(stream)}.events"
            child = self._labelled[("stream", stream)] = m.total_events_per_stream.labels(label)
        child.inc()
        return state

    def on_table_get(self, table: Any, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        self._table_op(table, self.KEYS_RETRIEVED)

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        self._table_op(table, self.KEYS_UPDATED)

    def on_table_del(self, table: Any, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        self._table_op(table, self.KEYS_DELETED)

    def _table_op(self, table: Any, operation: str) -> None:
        """Counted in plain Python, published on collect like the message counts: a
        locked ``inc`` per state read was 2.5% of batch50's samples (every window a
        batch opens is a read that misses)."""
        key = (table.name, operation)
        ops = self._table_ops
        ops[key] = ops.get(key, 0) + 1

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> Any:
        self._child(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def _clear_partition_related_metrics(self) -> None:
        self.publish()  # first: what was read before counts, and its series go below
        self._labelled.clear()
        super()._clear_partition_related_metrics()


class _PublishOnCollect:
    """A registry member with no metrics of its own: publishes the monitor's pending
    counts when the registry is collected.  Registered before Faust's metrics, so it
    runs before they are read (a registry collects in registration order)."""

    def __init__(self) -> None:
        self.monitor: CachedPrometheusMonitor | None = None

    def collect(self) -> Iterator[Any]:
        if self.monitor is not None:
            self.monitor.publish()
        return iter(())


def monitor_for(registry: CollectorRegistry, prefix: str = "faust") -> CachedPrometheusMonitor:
    """Faust's metrics in ``registry`` and the monitor that updates them."""
    hook = _PublishOnCollect()
    registry.register(hook)  # type: ignore[arg-type]
    hook.monitor = CachedPrometheusMonitor(metrics=FaustMetrics.create(registry, prefix))
    return hook.monitor


def install_faust_sensors(app: Any, registry: CollectorRegistry, prefix: str = "faust") -> None:
    """Faust's own sensor metrics (messages, tables, commits, rebalances) in ``registry``.

    faust's ``setup_prometheus_sensors`` would also add a second ``/metrics`` page; we
    only need its monitor.  The prefix is fixed (not the app id), so dashboards work for
    every deployment.  Must run before the worker starts (the app adds its monitor then).
    """
    app.monitor = monitor_for(registry, prefix)


__all__ = ["CachedPrometheusMonitor", "install_faust_sensors", "monitor_for"]
