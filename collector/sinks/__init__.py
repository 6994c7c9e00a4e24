"""Aggregate sinks: a shared buffer/retry/health core and the MySQL and InfluxDB writers."""

from collector.sinks.base import (
    BatchRejected,
    FlushResult,
    Sink,
    SinkHealth,
    SinkMisconfigured,
    SinkUnavailable,
)
from collector.sinks.influx import InfluxSink
from collector.sinks.mysql import MySQLSink
from collector.sinks.rows import Row

__all__ = [
    "BatchRejected",
    "FlushResult",
    "InfluxSink",
    "MySQLSink",
    "Row",
    "Sink",
    "SinkHealth",
    "SinkMisconfigured",
    "SinkUnavailable",
]
