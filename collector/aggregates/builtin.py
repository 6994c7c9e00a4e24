"""The three aggregates collector computes, and their specialised folds.

Each fold factory checks that the definition still has the measures it was written for,
so changing a measure without its fold fails at start-up instead of computing something
else; tests/unit/test_aggregates.py checks each fold equals the generic one.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from collector.aggregates.definition import (
    Aggregate,
    Column,
    Fold,
    InfluxField,
    KeyField,
    epoch_ms,
    naive_utc,
)
from collector.aggregates.measures import (
    Count,
    DistinctValues,
    FirstTs,
    LastTs,
    Max,
    Min,
    State,
    Sum,
    Truncated,
)


def _expect(defn: Aggregate, outputs: tuple[str, ...]) -> None:
    if defn.outputs != outputs:
        raise ValueError(f"{defn.name}: its fold is written for {outputs}, the definition "
                         f"has {defn.outputs}; update the fold or drop it")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _stats_fold(defn: Aggregate) -> Fold:
    _expect(defn, ("count", "value_count", "value_sum", "value_min", "value_max"))

    def fold(agg: State, event: Mapping[str, Any], ts: int) -> None:
        agg["count"] += 1
        value = event.get("value")
        if value is not None:
            agg["value_count"] += 1
            agg["value_sum"] += value
            agg["value_min"] = value if agg["value_min"] is None else min(agg["value_min"], value)
            agg["value_max"] = value if agg["value_max"] is None else max(agg["value_max"], value)
        if ts > agg["latest"]:
            agg["latest"] = ts

    return fold


def _segment_fold(defn: Aggregate) -> Fold:
    _expect(defn, ("count", "value_sum"))

    def fold(agg: State, event: Mapping[str, Any], ts: int) -> None:
        agg["count"] += 1
        value = event.get("value")
        if value is not None:
            agg["value_sum"] += value
        if ts > agg["latest"]:
            agg["latest"] = ts

    return fold


def _activity_fold(defn: Aggregate) -> Fold:
    _expect(defn, ("count", "types", "first_ts", "last_ts", "types_truncated"))
    distinct = defn.measures[1]
    assert isinstance(distinct, DistinctValues)
    limit = distinct.limit

    def fold(agg: State, event: Mapping[str, Any], ts: int) -> None:
        agg["count"] += 1
        etype = event["type"]
        types = agg["types"]
        if etype not in types:
            if len(types) < limit:
                insort(types, etype)
            else:
                agg["truncated"] = True
        agg["first_ts"] = ts if agg["first_ts"] is None else min(agg["first_ts"], ts)
        agg["last_ts"] = ts if agg["last_ts"] is None else max(agg["last_ts"], ts)
        if ts > agg["latest"]:
            agg["latest"] = ts

    return fold


def _types(values: Mapping[str, Any]) -> list[str]:
    return sorted({str(t) for t in values["types"]})


def _mean(values: Mapping[str, Any]) -> float | None:
    count = int(values["value_count"])
    return float(values["value_sum"]) / count if count else None


_COUNT = Column("count", "BIGINT", lambda v: int(v["count"]), value="count", read=int)
_VALUE_SUM = Column("value_sum", "DOUBLE", lambda v: float(v["value_sum"]), value="value_sum",
                    read=float)

EVENT_STATS: Final = Aggregate(
    name="event_stats",
    keys=(KeyField("source", "VARCHAR(32)", doc="Only this source.", sources=True),
          KeyField("type", "VARCHAR(64)", doc="Only this event type.",
                   pattern="^[a-z][a-z0-9_.]{0,63}$")),
    window="tumbling",
    measures=(Count("count"), Count("value_count", "value"), Sum("value_sum", "value"),
              Min("value_min", "value"), Max("value_max", "value")),
    columns=(
        _COUNT,
        Column("value_count", "BIGINT", lambda v: int(v["value_count"]), value="value_count",
               read=int),
        _VALUE_SUM,
        Column("value_min", "DOUBLE", lambda v: _opt_float(v["value_min"]), nullable=True,
               value="value_min", read=float),
        Column("value_max", "DOUBLE", lambda v: _opt_float(v["value_max"]), nullable=True,
               value="value_max", read=float),
    ),
    measurement="event_stats",
    influx_fields=(
        InfluxField("count", lambda v: int(v["count"])),
        InfluxField("value_count", lambda v: int(v["value_count"])),
        InfluxField("sum", lambda v: float(v["value_sum"])),
        InfluxField("min", lambda v: _opt_float(v["value_min"])),
        InfluxField("max", lambda v: _opt_float(v["value_max"])),
        InfluxField("mean", _mean),
    ),
    route="/api/v1/stats/events",
    summary="per source and type",
    fold_factory=_stats_fold,
)

SEGMENT_STATS: Final = Aggregate(
    name="segment_stats",
    keys=(KeyField("segment", "VARCHAR(64)", default="unknown", doc="Only this segment."),
          KeyField("country", "VARCHAR(8)", default="unknown", doc="Only this country.")),
    window="hopping",
    measures=(Count("count"), Sum("value_sum", "value")),
    columns=(_COUNT, _VALUE_SUM),
    measurement="segment_stats",
    influx_fields=(InfluxField("count", lambda v: int(v["count"])),
                   InfluxField("sum", lambda v: float(v["value_sum"]))),
    route="/api/v1/segments",
    summary="per segment and country",
    fold_factory=_segment_fold,
)

USER_ACTIVITY: Final = Aggregate(
    name="user_activity",
    keys=(KeyField("user_id", "VARCHAR(64)", pattern="^[A-Za-z0-9_.:@-]{1,64}$"),),
    window="tumbling",
    measures=(Count("count"), DistinctValues("types", "type"), FirstTs(), LastTs(),
              Truncated("types_truncated")),
    columns=(
        _COUNT,
        Column("distinct_types", "INT", lambda v: len({str(t) for t in v["types"]})),
        Column("types", "VARCHAR(2048)", lambda v: ",".join(_types(v)), value="types",
               read=lambda t: [x for x in str(t).split(",") if x]),
        Column("types_truncated", "BOOL", lambda v: bool(v.get("types_truncated", False)),
               value="types_truncated", read=bool),
        Column("first_event_at", "DATETIME(3)", lambda v: naive_utc(int(v["first_ts"])),
               value="first_ts", read=epoch_ms),
        Column("last_event_at", "DATETIME(3)", lambda v: naive_utc(int(v["last_ts"])),
               value="last_ts", read=epoch_ms),
    ),
    per_user=True,
    sinks=frozenset({"mysql"}),  # a user_id tag would explode InfluxDB's series
    route="/api/v1/users/{user_id}/activity",
    summary="of one user",
    fold_factory=_activity_fold,
)

def _ms_or_none(value: Any) -> datetime | None:
    return None if value is None else naive_utc(int(value))


#: a user's sessions (session window, ``windows.session_gap_seconds``): the row's
#: window_start is the session start and window_seconds the gap.  ``merged_into`` is
#: set on the row of a session that no longer exists under its start (absorbed by a
#: bridging event, or its start moved earlier): the start of the session that holds
#: its events now; such a row counts nothing (collector/engine/sessions.py).
USER_SESSIONS: Final = Aggregate(
    name="user_sessions",
    keys=USER_ACTIVITY.keys,
    window="session",
    measures=USER_ACTIVITY.measures,
    columns=(
        Column("session_end", "DATETIME(3)", lambda v: naive_utc(int(v["last_ts"])),
               value="last_ts", read=epoch_ms),
        Column("duration_seconds", "DOUBLE",
               lambda v: (int(v["last_ts"]) - int(v["first_ts"])) / 1000),
        *USER_ACTIVITY.columns[:4],  # count, distinct_types, types, types_truncated
        Column("merged_into", "DATETIME(3)", lambda v: _ms_or_none(v.get("merged_into")),
               nullable=True),
    ),
    per_user=True,
    measurement="user_sessions",
    influx_fields=(
        InfluxField("count", lambda v: int(v["count"])),
        InfluxField("distinct_types", lambda v: len(v["types"])),
        InfluxField("duration_seconds",
                    lambda v: (int(v["last_ts"]) - int(v["first_ts"])) / 1000),
        InfluxField("session_end_ms", lambda v: int(v["last_ts"])),
        InfluxField("merged_into_ms", lambda v: v.get("merged_into")),
    ),
    route="/api/v1/users/{user_id}/sessions",
    summary="of one user (inactivity gap windows.session_gap_seconds)",
    fold_factory=_activity_fold,
)

#: every aggregate, in the order of the query endpoints (and the OpenAPI document)
DEFINITIONS: Final[tuple[Aggregate, ...]] = (EVENT_STATS, SEGMENT_STATS, USER_ACTIVITY,
                                             USER_SESSIONS)
BY_NAME: Final[Mapping[str, Aggregate]] = {d.name: d for d in DEFINITIONS}
