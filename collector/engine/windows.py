"""Window aggregates by table name, derived from the definitions in collector.aggregates.

All times are UTC epoch milliseconds.  Aggregates are plain dicts (they are stored in
Faust tables and sent as JSON), merged by the definitions so that the in-partition
combiner and the cross-partition merge agree on one definition.  The ``new_*``/``add_*``
/``merge_*`` names are kept for callers and tests that use one table directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from collector.aggregates import BY_NAME, DEFINITIONS, MAX_USER_TYPES, WindowSpec
from collector.aggregates import EVENT_STATS as _EVENT_STATS
from collector.aggregates import SEGMENT_STATS as _SEGMENT_STATS
from collector.aggregates import USER_ACTIVITY as _USER_ACTIVITY
from collector.aggregates import USER_SESSIONS as _USER_SESSIONS

EVENT_STATS = _EVENT_STATS.name
USER_ACTIVITY = _USER_ACTIVITY.name
SEGMENT_STATS = _SEGMENT_STATS.name
USER_SESSIONS = _USER_SESSIONS.name
TABLES = tuple(d.name for d in DEFINITIONS)

NEW: Mapping[str, Callable[[], dict[str, Any]]] = {d.name: d.new for d in DEFINITIONS}
MERGE: Mapping[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    d.name: d.merge for d in DEFINITIONS}

new_stats = _EVENT_STATS.new
new_segment = _SEGMENT_STATS.new
new_activity = _USER_ACTIVITY.new
merge_stats = _EVENT_STATS.merge
merge_segment = _SEGMENT_STATS.merge
_ADD_STATS = _EVENT_STATS.compile()
_ADD_SEGMENT = _SEGMENT_STATS.compile()


def add_stats(agg: dict[str, Any], value: float | None, ts: int) -> None:
    _ADD_STATS(agg, {"value": value}, ts)


def add_segment(agg: dict[str, Any], value: float | None, ts: int) -> None:
    _ADD_SEGMENT(agg, {"value": value}, ts)


def add_activity(agg: dict[str, Any], etype: str, ts: int,
                 max_types: int = MAX_USER_TYPES) -> None:
    """Count one event of a user window (past ``max_types`` types, only ``truncated``)."""
    _USER_ACTIVITY.bound(max_types).compile()(agg, {"type": etype}, ts)


def merge_activity(into: dict[str, Any], other: dict[str, Any],
                   max_types: int = MAX_USER_TYPES) -> None:
    _USER_ACTIVITY.bound(max_types).merge(into, other)


def combine(table: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of partial aggregates (one per input slot)."""
    return BY_NAME[table].combine(parts)


def row_values(table: str, agg: dict[str, Any]) -> dict[str, Any]:
    """Sink column values of an aggregate (``latest`` is bookkeeping, not a column)."""
    return BY_NAME[table].row_values(agg)


__all__ = ["EVENT_STATS", "MERGE", "NEW", "SEGMENT_STATS", "TABLES", "USER_ACTIVITY",
           "USER_SESSIONS",
           "WindowSpec", "add_activity", "add_segment", "add_stats", "combine",
           "merge_activity", "merge_segment", "merge_stats", "new_activity", "new_segment",
           "new_stats", "row_values"]
