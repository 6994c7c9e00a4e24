"""The aggregate definition: one object says everything about one aggregate table.

State, combine/merge, the sink rows, the MySQL upsert and schema check, the InfluxDB
point, the query API's keys and history, and the OpenAPI schema all derive from it, so
adding an aggregate means one definition (collector/aggregates/builtin.py) and one
migration (tests/unit/test_aggregates.py fails naming any column they disagree on).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.aggregates.measures import DistinctValues, Getter, Measure, State
from collector.aggregates.window import WindowKind

#: fold(state, event, ts): count one event into a window's state (the hot path)
Fold = Callable[[State, Mapping[str, Any], int], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def naive_utc(ms: int) -> datetime:
    """UTC epoch ms as the naive UTC datetime the driver uses (DATETIME has no zone)."""
    return (_EPOCH + timedelta(milliseconds=ms)).replace(tzinfo=None)


def epoch_ms(moment: datetime) -> int:
    """Epoch ms of a naive-UTC DATETIME from the driver."""
    return (moment.replace(tzinfo=UTC) - _EPOCH) // _ONE_MS


@dataclass(frozen=True, slots=True)
class KeyField:
    """One part of the key: an event field, its MySQL column and its query parameter.

    ``default`` None means the event must have the field (the validator guarantees it);
    otherwise events without it are grouped under ``default``.
    """

    name: str
    sql: str  # column type, e.g. VARCHAR(32)
    default: str | None = None
    doc: str = ""  # the query parameter's description ("" when it is in the path)
    pattern: str | None = None  # the parameter's pattern in the OpenAPI document
    #: the parameter's values are the configured sources (an OpenAPI enum)
    sources: bool = False
    #: reads the key from the event when it is not the top-level field ``name``
    #: (a configured aggregate's ``properties.<key>``, or a field that may be null)
    get: Callable[[Mapping[str, Any]], str] | None = field(default=None, compare=False)

    def of(self, event: Mapping[str, Any]) -> str:
        if self.get is not None:
            return self.get(event)
        return event[self.name] if self.default is None else event.get(self.name, self.default)


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Column:
    """A MySQL value column: ``param`` makes its driver parameter from the row values
    (raising KeyError/TypeError/ValueError when malformed); ``value`` names the row value
    the history reads back from it, through ``read`` (NULL stays None)."""

    name: str
    sql: str  # type, e.g. BIGINT
    param: Callable[[Mapping[str, Any]], Any]
    nullable: bool = False
    value: str | None = None
    read: Callable[[Any], Any] = _same


@dataclass(frozen=True, slots=True)
class InfluxField:
    """A field of the InfluxDB point; ``of`` returns None to omit it (no nulls there)."""

    name: str
    of: Callable[[Mapping[str, Any]], Any]


#: columns every aggregate table has besides its key and value columns
COMMON_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("window_start", "DATETIME(3)", False), ("window_seconds", "INT", False),
    ("revision", "INT", False), ("final", "BOOL", False), ("updated_at", "DATETIME(3)", False),
)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One aggregate table.

    ``per_user``: keyed by user, so final in the raw worker (raw topics are keyed by
    user_id) and the anchor of the event-id dedupe; otherwise each input slot keeps a
    partial that the merge combines across partitions.  ``fold_factory`` may give a
    hand-specialised fold, equal to folding the measures one by one (a unit test checks
    it) but without a Python call per measure and event.
    """

    name: str
    keys: tuple[KeyField, ...]
    window: WindowKind
    measures: tuple[Measure, ...]
    columns: tuple[Column, ...]
    per_user: bool = False
    sinks: frozenset[str] = frozenset({"mysql", "influxdb"})
    measurement: str | None = None  # None: not written to InfluxDB
    influx_fields: tuple[InfluxField, ...] = ()
    route: str = ""  # the query endpoint
    summary: str = ""  # how its windows are keyed, for the OpenAPI summary
    #: (size, step) in seconds, for a window of its own; None: its kind's, from settings
    sizes: tuple[int, int] | None = None
    #: declared in configuration (collector.aggregates.configured), not in code
    configured: bool = False
    fold_factory: Callable[[Aggregate], Fold] | None = field(default=None, compare=False)
    #: the empty state, copied by :meth:`new` (a new window per key is frequent)
    _empty: State = field(init=False, repr=False, compare=False)
    _lists: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _dicts: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _getters: tuple[tuple[str, Getter], ...] = field(init=False, repr=False, compare=False)
    _params: tuple[Callable[[Mapping[str, Any]], Any], ...] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        empty: State = {}
        for m in self.measures:
            empty.update(m.initialize())
        empty["latest"] = 0
        object.__setattr__(self, "_empty", empty)
        object.__setattr__(self, "_lists",
                           tuple(k for k, v in empty.items() if isinstance(v, list)))
        object.__setattr__(self, "_dicts",
                           tuple(k for k, v in empty.items() if isinstance(v, dict)))
        object.__setattr__(self, "_getters", tuple(g for m in self.measures for g in m.getters()))
        object.__setattr__(self, "_params", tuple(c.param for c in self.columns))

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Row value names, in order."""
        return tuple(name for m in self.measures for name in m.outputs)

    def new(self) -> State:
        """An empty window state (``latest``: the newest event time, for latency)."""
        state = self._empty.copy()
        for name in self._lists:
            state[name] = []
        for name in self._dicts:
            state[name] = {}
        return state

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        for m in self.measures:
            m.merge(into, other)
        into["latest"] = max(into["latest"], other["latest"])

    def combine(self, parts: list[dict[str, Any]]) -> State:
        """The sum of partial states (one per input slot)."""
        total = self.new()
        for part in parts:
            self.merge(total, part)
        return total

    def row_values(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Sink row values of a state (``latest`` is bookkeeping, not a value)."""
        return {name: get(state) for name, get in self._getters}

    def bound(self, max_distinct: int) -> Aggregate:
        """This aggregate with its distinct-value limits set (``windows.max_user_types``)."""
        measures = tuple(dataclasses.replace(m, limit=max_distinct)
                         if isinstance(m, DistinctValues) else m for m in self.measures)
        return dataclasses.replace(self, measures=measures)

    def compile(self) -> Fold:
        """The fold of one event, chosen once at start-up."""
        if self.fold_factory is not None:
            return self.fold_factory(self)
        aggs = tuple(m.agg for m in self.measures)

        def fold(state: State, event: Mapping[str, Any], ts: int) -> None:
            for agg in aggs:
                agg(state, event, ts)
            if ts > state["latest"]:
                state["latest"] = ts

        return fold

    def key_of(self, event: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(k.of(event) for k in self.keys)

    # ------------------------------------------------------------------ MySQL

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Upserted value columns, in INSERT order (``revision`` last)."""
        return (*(c.name for c in self.columns), "revision")

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple([param(values) for param in self._params])

    @property
    def history_columns(self) -> tuple[Column, ...]:
        """The columns the history reads back, in the order of the row values."""
        by_value = {c.value: c for c in self.columns if c.value is not None}
        return tuple(by_value[name] for name in self.outputs if name in by_value)

    def history_values(self, raw: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, value in zip(self.history_columns, raw, strict=True):
            assert column.value is not None
            out[column.value] = None if value is None else column.read(value)
        return out

    def schema_columns(self) -> dict[str, tuple[str, bool]]:
        """Every MySQL column -> (type, nullable), as the migrations must create them."""
        out = {name: (sql, null) for name, sql, null in COMMON_COLUMNS}
        out.update((k.name, (k.sql, False)) for k in self.keys)
        out.update((c.name, (c.sql, c.nullable)) for c in self.columns)
        return out

    # -------------------------------------------------------------- OpenAPI

    def values_schema(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for m in self.measures:
            out.update(m.schema())
        return out
