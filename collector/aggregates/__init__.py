"""Aggregates as definitions: what each aggregate table is, in one place.

Faust-free and sink-free: engine, sinks, web and db derive from these definitions, and
this package imports only ``collector.config``.
"""

from collector.aggregates.builtin import (
    BY_NAME,
    DEFINITIONS,
    EVENT_STATS,
    SEGMENT_STATS,
    USER_ACTIVITY,
    USER_SESSIONS,
)
from collector.aggregates.definition import Aggregate, Column, InfluxField, KeyField
from collector.aggregates.measures import (
    MAX_USER_TYPES,
    Count,
    DistinctValues,
    FirstTs,
    LastTs,
    Max,
    Measure,
    Min,
    Sum,
    Truncated,
)
from collector.aggregates.window import WindowKind, WindowSpec, window_specs

__all__ = [
    "BY_NAME", "DEFINITIONS", "EVENT_STATS", "MAX_USER_TYPES", "SEGMENT_STATS",
    "USER_ACTIVITY", "USER_SESSIONS", "Aggregate", "Column", "Count", "DistinctValues", "FirstTs",
    "InfluxField", "KeyField", "LastTs", "Max", "Measure", "Min", "Sum", "Truncated",
    "WindowKind", "WindowSpec", "window_specs",
]
