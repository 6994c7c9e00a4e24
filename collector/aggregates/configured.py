"""Aggregates declared in configuration (``[aggregate.<name>]``), as definitions.

The settings were validated when they were loaded (collector.config.aggregates: names
whitelisted, fields and measures known, windows consistent); this turns them into the
same :class:`Aggregate` the built-ins are, merged across partitions like event_stats
(they are never keyed by user), written to the sinks they name, served at
``/api/v1/aggregates/<name>``, with a MySQL table created from the definition
(collector.db.tables) rather than by a migration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.aggregates.builtin import BY_NAME, USER_ACTIVITY
from collector.aggregates.definition import (
    Aggregate,
    Column,
    InfluxField,
    KeyField,
    epoch_ms,
    naive_utc,
)
from collector.aggregates.fields import (
    DistinctCount,
    FieldMax,
    FieldMin,
    FieldSum,
    key_reader,
    number_reader,
    reader,
)
from collector.aggregates.measures import Count, FirstTs, Getter, LastTs, Measure
from collector.config import Settings
from collector.config.aggregates import (
    GROUP_FIELDS,
    PROPERTY_WIDTH,
    AggregateSettings,
    MeasureSpec,
    column_of,
    window_of,
)

ROUTE_PREFIX = "/api/v1/aggregates/"


def _int(name: str) -> Any:
    return lambda v: int(v[name])


def _float(name: str) -> Any:
    return lambda v: float(v[name])


def _opt_float(name: str) -> Any:
    return lambda v: None if v[name] is None else float(v[name])


def _bool(name: str) -> Any:
    return lambda v: bool(v[name])


def _key(field: str) -> KeyField:
    width = GROUP_FIELDS.get(field, PROPERTY_WIDTH)
    return KeyField(column_of(field), f"VARCHAR({width})", default="unknown",
                    doc=f"Only this {field}.", sources=field == "source",
                    get=key_reader(field))


def _measure(spec: MeasureSpec, max_distinct: int
             ) -> tuple[Measure, tuple[Column, ...], tuple[InfluxField, ...]]:
    """A measure with its MySQL columns and InfluxDB fields."""
    name, fn = spec.name, spec.fn
    if fn == "count":
        return (Count(name), (Column(name, "BIGINT", _int(name), value=name, read=int),),
                (InfluxField(name, _int(name)),))
    assert spec.field is not None
    if fn == "distinct":
        flag = f"{name}_truncated"
        return (DistinctCount(name, reader(spec.field), max_distinct),
                (Column(name, "BIGINT", _int(name), value=name, read=int),
                 Column(flag, "BOOL", _bool(flag), value=flag, read=bool)),
                (InfluxField(name, _int(name)), InfluxField(flag, _bool(flag))))
    read = number_reader(spec.field)
    if fn == "sum":
        return (FieldSum(name, spec.field, read),
                (Column(name, "DOUBLE", _float(name), value=name, read=float),),
                (InfluxField(name, _float(name)),))
    kind = FieldMin if fn == "min" else FieldMax
    return (kind(name, spec.field, read),
            (Column(name, "DOUBLE", _opt_float(name), nullable=True, value=name, read=float),),
            (InfluxField(name, _opt_float(name)),))


#: a configured session's hidden event count: how the session flush sees that a
#: session changed (it may declare no count); a name no measure can take (NAME_RE)
EVENTS = "_events"


@dataclass(frozen=True, slots=True)
class _Events(Count):
    """Events of a session, kept in its state but not a row value."""

    name: str = EVENTS

    @property
    def outputs(self) -> tuple[str, ...]:
        return ()

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        return ()

    def schema(self) -> dict[str, dict[str, Any]]:
        return {}


def _ms_or_none(value: Any) -> Any:
    return None if value is None else naive_utc(int(value))


def _duration(v: Mapping[str, Any]) -> float:
    return (int(v["last_ts"]) - int(v["first_ts"])) / 1000


def _session(columns: list[Column], fields: list[InfluxField]
             ) -> tuple[tuple[Column, ...], tuple[InfluxField, ...]]:
    """A session row's columns and fields around the measures', as user_sessions has
    them: its end and duration first, ``merged_into`` (a marker's target) last."""
    head = (Column("session_end", "DATETIME(3)", lambda v: naive_utc(int(v["last_ts"])),
                   value="last_ts", read=epoch_ms),
            Column("duration_seconds", "DOUBLE", _duration))
    tail = Column("merged_into", "DATETIME(3)", lambda v: _ms_or_none(v.get("merged_into")),
                  nullable=True)
    influx = (InfluxField("duration_seconds", _duration),
              InfluxField("session_end_ms", lambda v: int(v["last_ts"])),
              InfluxField("merged_into_ms", lambda v: v.get("merged_into")))
    return (*head, *columns, tail), (*fields, *influx)


def build(name: str, agg: AggregateSettings, sizes: tuple[int, int]) -> Aggregate:
    """The definition of one configured aggregate.  A session window is per user, like
    user_sessions: keyed by user_id, its state the measures plus the first and last
    event time and a hidden event count (engine/sessions.py builds it from the per-user
    windows, which carry it for this aggregate: engine/specs.py ``extra``)."""
    if name in BY_NAME:  # collector.config.aggregates.RESERVED holds every built-in
        raise ValueError(f"aggregate name {name!r} is a built-in aggregate")
    session = agg.window == "session"
    measures: list[Measure] = [FirstTs(), LastTs(), _Events()] if session else []
    columns: list[Column] = []
    fields: list[InfluxField] = []
    for spec in agg.parsed_measures():
        measure, cols, flds = _measure(spec, agg.max_distinct)
        measures.append(measure)
        columns += cols
        fields += flds
    all_columns, all_fields = (_session(columns, fields) if session
                               else (tuple(columns), tuple(fields)))
    return Aggregate(
        name=name,
        keys=USER_ACTIVITY.keys if session else tuple(_key(f) for f in agg.group_by),
        window=agg.window,
        measures=tuple(measures),
        columns=all_columns,
        per_user=session,
        sinks=frozenset(agg.sinks),
        measurement=name if "influxdb" in agg.sinks else None,
        influx_fields=all_fields,
        route=ROUTE_PREFIX + name,
        summary=(f"of one user (inactivity gap {sizes[0]} s)" if session
                 else "per " + " and ".join(agg.group_by)),
        sizes=sizes,
        configured=True,
    )


def configured_aggregates(settings: Settings) -> tuple[Aggregate, ...]:
    """Every ``aggregates.*`` definition, in name order (empty when none is declared)."""
    return tuple(build(name, agg, window_of(agg, settings.windows))
                 for name, agg in sorted(settings.aggregates.items()))


def by_name(aggregates: tuple[Aggregate, ...]) -> Mapping[str, Aggregate]:
    return {a.name: a for a in aggregates}


__all__ = ["EVENTS", "ROUTE_PREFIX", "build", "by_name", "configured_aggregates"]
