"""Measures: what an aggregate computes per window, as initialize/agg/merge/result objects
(the shape of quix-streams' aggregations).

A measure owns some keys of the aggregate's state dict.  The state is a flat JSON dict
because it is stored in the Faust tables and sent between workers as partials: the keys
each measure owns are that wire format, so they must not change.  ``agg`` folds one
event in, ``merge`` adds another partial of the same window (the cross-partition merge),
``result`` gives the row values (``outputs``, in order), ``schema`` their OpenAPI types.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

#: distinct event types a user window keeps (``windows.max_user_types``): the MySQL
#: column holds 2048 characters and a type up to 64 plus a comma
MAX_USER_TYPES = 30

State = dict[str, Any]
Getter = Callable[[Mapping[str, Any]], Any]
_INT: dict[str, Any] = {"type": "integer"}
_NUM: dict[str, Any] = {"type": "number"}
_NUM_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}  # OpenAPI 3.1 (JSON Schema)


class Measure(Protocol):
    """One computed quantity of a window."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    def initialize(self) -> State: ...

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None: ...

    def merge(self, into: State, other: Mapping[str, Any]) -> None: ...

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]: ...

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        """(output, state -> value) pairs: ``result`` without a dict per measure, for
        building a row's values in one comprehension."""
        ...

    def schema(self) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Count:
    """Events in the window; with ``field``, only those whose field is not None."""

    name: str = "count"
    field: str | None = None

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def initialize(self) -> State:
        return {self.name: 0}

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        if self.field is None or event.get(self.field) is not None:
            state[self.name] += 1

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        into[self.name] += other[self.name]

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: state[self.name]}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        return ((self.name, itemgetter(self.name)),)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: _INT}


@dataclass(frozen=True, slots=True)
class Sum:
    """Sum of a numeric field (events without it add nothing)."""

    name: str
    field: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def initialize(self) -> State:
        return {self.name: 0.0}

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        value = event.get(self.field)
        if value is not None:
            state[self.name] += value

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        into[self.name] += other[self.name]

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: state[self.name]}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        return ((self.name, itemgetter(self.name)),)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: _NUM}


@dataclass(frozen=True, slots=True)
class Min:
    """Least value of a field; None while no event had one."""

    name: str
    field: str

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def pick(self, a: Any, b: Any) -> Any:
        return min(a, b)

    def initialize(self) -> State:
        return {self.name: None}

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        self._fold(state, event.get(self.field))

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        self._fold(into, other[self.name])

    def _fold(self, state: State, value: Any) -> None:
        if value is not None:
            old = state[self.name]
            state[self.name] = value if old is None else self.pick(old, value)

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: state[self.name]}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        return ((self.name, itemgetter(self.name)),)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: _NUM_OR_NULL}


@dataclass(frozen=True, slots=True)
class Max(Min):
    """Greatest value of a field; None while no event had one."""

    def pick(self, a: Any, b: Any) -> Any:
        return max(a, b)


@dataclass(frozen=True, slots=True)
class FirstTs(Min):
    """Earliest event time in the window (UTC epoch ms)."""

    name: str = "first_ts"
    field: str = "ts"

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        self._fold(state, ts)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: _INT}


@dataclass(frozen=True, slots=True)
class LastTs(FirstTs):
    """Latest event time in the window (UTC epoch ms)."""

    name: str = "last_ts"

    def pick(self, a: Any, b: Any) -> Any:
        return max(a, b)


@dataclass(frozen=True, slots=True)
class DistinctValues:
    """Sorted distinct values of a field, at most ``limit``: past it, a new value only sets
    the ``flag`` state key (a user sending thousands of types made each event O(n) and
    the row unwritable).  :class:`Truncated` reports that flag as a row value."""

    name: str
    field: str
    limit: int = MAX_USER_TYPES
    flag: str = "truncated"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def initialize(self) -> State:
        return {self.name: []}

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        value = event[self.field]
        values = state[self.name]
        if value not in values:
            if len(values) < self.limit:
                insort(values, value)
            else:
                state[self.flag] = True

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        values = sorted(set(into[self.name]) | set(other[self.name]))
        if len(values) > self.limit or other.get(self.flag):
            into[self.flag] = True
        into[self.name] = values[:self.limit]

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: list(state[self.name])}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        name = self.name
        return ((name, lambda state: list(state[name])),)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: {"type": "array", "items": {"type": "string"}}}


@dataclass(frozen=True, slots=True)
class Truncated:
    """Whether a :class:`DistinctValues` dropped values (its ``flag``, set by it)."""

    name: str
    flag: str = "truncated"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name,)

    def initialize(self) -> State:
        return {}  # the flag key exists only once set: the state's wire format

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        pass

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        pass  # DistinctValues.merge sets it

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: bool(state.get(self.flag, False))}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        flag = self.flag
        return ((self.name, lambda state: bool(state.get(flag, False))),)

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: {"type": "boolean"}}
