"""Event-time window arithmetic and the aggregate values, as plain functions.

All times are UTC epoch milliseconds.  Aggregates are plain dicts (they are stored in
Faust tables and sent as JSON), merged by the functions here so that the in-partition
combiner and the cross-partition merge agree on one definition.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from typing import Any

EVENT_STATS = "event_stats"
USER_ACTIVITY = "user_activity"
SEGMENT_STATS = "segment_stats"
TABLES = (EVENT_STATS, USER_ACTIVITY, SEGMENT_STATS)


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A tumbling (step == size) or hopping window, in milliseconds.

    Two event-time horizons past a window's end (Beam's model): ``grace_ms`` until its
    row is first written as final (the close mark passed it), ``lateness_ms`` until it
    stops accepting events (the slot's stream time passed it).  In between, a late event
    updates the window and its row is written again as a new revision.
    """

    size_ms: int
    step_ms: int
    grace_ms: int
    lateness_ms: int = -1  # -1: the grace (no late updates)

    def __post_init__(self) -> None:
        if self.lateness_ms < self.grace_ms:
            object.__setattr__(self, "lateness_ms", self.grace_ms)

    @classmethod
    def tumbling(cls, size_s: int, grace_s: int, lateness_s: int = -1) -> WindowSpec:
        return cls(size_s * 1000, size_s * 1000, grace_s * 1000, lateness_s * 1000)

    @classmethod
    def hopping(cls, size_s: int, step_s: int, grace_s: int, lateness_s: int = -1) -> WindowSpec:
        return cls(size_s * 1000, step_s * 1000, grace_s * 1000, lateness_s * 1000)

    @property
    def seconds(self) -> int:
        return self.size_ms // 1000

    def starts(self, ts: int) -> range:
        """Starts of every window containing ``ts``, oldest first."""
        newest = ts - ts % self.step_ms
        oldest = newest - self.size_ms + self.step_ms
        return range(oldest, newest + 1, self.step_ms)

    def newest_start(self, ts: int) -> int:
        return ts - ts % self.step_ms

    def end(self, start: int) -> int:
        return start + self.size_ms

    def is_closed(self, start: int, closed_through: int) -> bool:
        """Closed (its row final) once the close mark passed window end + grace."""
        return start + self.size_ms + self.grace_ms <= closed_through

    def is_late(self, start: int, stream_time: int) -> bool:
        """Too late for any event once stream time passed window end + allowed lateness."""
        return start + self.size_ms + self.lateness_ms <= stream_time


# ---------------------------------------------------------------- aggregate values


def new_stats() -> dict[str, Any]:
    return {"count": 0, "value_count": 0, "value_sum": 0.0, "value_min": None, "value_max": None,
            "latest": 0}


def add_stats(agg: dict[str, Any], value: float | None, ts: int) -> None:
    agg["count"] += 1
    if value is not None:
        agg["value_count"] += 1
        agg["value_sum"] += value
        agg["value_min"] = value if agg["value_min"] is None else min(agg["value_min"], value)
        agg["value_max"] = value if agg["value_max"] is None else max(agg["value_max"], value)
    if ts > agg["latest"]:
        agg["latest"] = ts


def merge_stats(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["count"] += other["count"]
    into["value_count"] += other["value_count"]
    into["value_sum"] += other["value_sum"]
    for name, pick in (("value_min", min), ("value_max", max)):
        if other[name] is not None:
            into[name] = other[name] if into[name] is None else pick(into[name], other[name])
    into["latest"] = max(into["latest"], other["latest"])


def new_segment() -> dict[str, Any]:
    return {"count": 0, "value_sum": 0.0, "latest": 0}


def add_segment(agg: dict[str, Any], value: float | None, ts: int) -> None:
    agg["count"] += 1
    if value is not None:
        agg["value_sum"] += value
    if ts > agg["latest"]:
        agg["latest"] = ts


def merge_segment(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["count"] += other["count"]
    into["value_sum"] += other["value_sum"]
    into["latest"] = max(into["latest"], other["latest"])


#: distinct event types a user window keeps (``windows.max_user_types``): the MySQL
#: column holds 2048 characters and a type up to 64 plus a comma
MAX_USER_TYPES = 30


def new_activity() -> dict[str, Any]:
    return {"count": 0, "types": [], "first_ts": None, "last_ts": None, "latest": 0}


def add_activity(agg: dict[str, Any], etype: str, ts: int,
                 max_types: int = MAX_USER_TYPES) -> None:
    """Count one event; past ``max_types`` distinct types, new ones only set ``truncated``
    (a user sending thousands of types made each event O(n) and the row unwritable)."""
    agg["count"] += 1
    types = agg["types"]
    if etype not in types:
        if len(types) < max_types:
            insort(types, etype)
        else:
            agg["truncated"] = True
    agg["first_ts"] = ts if agg["first_ts"] is None else min(agg["first_ts"], ts)
    agg["last_ts"] = ts if agg["last_ts"] is None else max(agg["last_ts"], ts)
    if ts > agg["latest"]:
        agg["latest"] = ts


def merge_activity(into: dict[str, Any], other: dict[str, Any],
                   max_types: int = MAX_USER_TYPES) -> None:
    into["count"] += other["count"]
    types = sorted(set(into["types"]) | set(other["types"]))
    if len(types) > max_types or other.get("truncated"):
        into["truncated"] = True
    into["types"] = types[:max_types]
    for name, pick in (("first_ts", min), ("last_ts", max)):
        if other[name] is not None:
            into[name] = other[name] if into[name] is None else pick(into[name], other[name])
    into["latest"] = max(into["latest"], other["latest"])


NEW = {EVENT_STATS: new_stats, SEGMENT_STATS: new_segment, USER_ACTIVITY: new_activity}
MERGE = {EVENT_STATS: merge_stats, SEGMENT_STATS: merge_segment, USER_ACTIVITY: merge_activity}


def combine(table: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of partial aggregates (one per input slot)."""
    total = NEW[table]()
    for part in parts:
        MERGE[table](total, part)
    return total


def row_values(table: str, agg: dict[str, Any]) -> dict[str, Any]:
    """Sink column values of an aggregate (``latest`` is bookkeeping, not a column)."""
    if table == EVENT_STATS:
        return {k: agg[k] for k in ("count", "value_count", "value_sum", "value_min", "value_max")}
    if table == SEGMENT_STATS:
        return {"count": agg["count"], "value_sum": agg["value_sum"]}
    return {"count": agg["count"], "types": list(agg["types"]), "first_ts": agg["first_ts"],
            "last_ts": agg["last_ts"], "types_truncated": bool(agg.get("truncated", False))}
