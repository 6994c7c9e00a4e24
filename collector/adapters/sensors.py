"""Faust's Prometheus sensor, in our registry, with its per-message label lookups cached.

faust's ``PrometheusMonitor`` resolves labelled children (``metric.labels(...)``) and
normalises the stream name with a regex for every message and event: measured at about
12 µs per message over Faust's default monitor (2.5 µs), a tenth of what a message costs
Faust.  This subclass resolves each child once (about 7 µs over the default) and keeps
it until a rebalance clears the per-partition series (faust removes them then, so a
cached child would update a series nobody exports).
"""

from __future__ import annotations

from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry


class CachedPrometheusMonitor(PrometheusMonitor):
    """``PrometheusMonitor`` with the same series, cheaper per message."""

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics=metrics, **kwargs)
        self._labelled: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: Any) -> Any:
        key = (id(metric), *labels)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(*labels)
        return child

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        m = self._metrics
        m.messages_received.inc()
        m.active_messages.inc()
        self._child(m.messages_received_per_topics, tp.topic).inc()
        self._child(m.messages_received_per_topics_partition, tp.topic, tp.partition).set(offset)

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        """Per fetched message (Faust's getmany): the high watermark gauge, cached."""
        Monitor.track_tp_end_offset(self, tp, offset)
        self._child(self._metrics.topic_partition_end_offset, tp.topic, tp.partition).set(offset)

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
        child = self._labelled.get(("table", table.name, operation))
        if child is None:
            child = self._labelled[("table", table.name, operation)] = (
                self._metrics.table_operations.labels(f"table.{table.name}", operation)
            )
        child.inc()

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> Any:
        self._child(self._metrics.topic_messages_sent, f"topic.{topic}").inc()
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def _clear_partition_related_metrics(self) -> None:
        self._labelled.clear()
        super()._clear_partition_related_metrics()


def install_faust_sensors(app: Any, registry: CollectorRegistry, prefix: str = "faust") -> None:
    """Faust's own sensor metrics (messages, tables, commits, rebalances) in ``registry``.

    faust's ``setup_prometheus_sensors`` would also add a second ``/metrics`` page; we
    only need its monitor.  The prefix is fixed (not the app id), so dashboards work for
    every deployment.  Must run before the worker starts (the app adds its monitor then).
    """
    app.monitor = CachedPrometheusMonitor(metrics=FaustMetrics.create(registry, prefix))


__all__ = ["CachedPrometheusMonitor", "install_faust_sensors"]
