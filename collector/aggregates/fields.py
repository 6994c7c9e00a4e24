"""Event fields as a configured aggregate reads them, and the measures that take a
field getter (``properties.<key>`` is not a top-level field, so ``event.get`` will not do).

The fold sees the enriched event: the validated fields (``value`` a float or None,
``device_id`` a string or None, ``properties`` a dict) plus ``segment``, ``country`` and
``plan`` from the user's profile (``unknown`` for an unknown user).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from collector.aggregates.measures import Getter, Min, State, Sum

#: the key of an event without the field (or with null): as segment_stats does
MISSING = "unknown"

Read = Callable[[Mapping[str, Any]], Any]


def reader(field: str) -> Read:
    """The raw value of ``field`` (``properties.<key>`` included); None when absent."""
    if field.startswith("properties."):
        key = field.removeprefix("properties.")
        return lambda event: (event.get("properties") or {}).get(key)
    return lambda event: event.get(field)


def label(value: Any) -> str:
    """A field value as a key (and distinct value): strings as they are, ``true`` and
    ``false``, integral numbers without ``.0`` (JSON's 3 and 3.0 are one number)."""
    if value is None:
        return MISSING
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def key_reader(field: str) -> Callable[[Mapping[str, Any]], str]:
    """A field as a key: ``label`` of its value, with a fast path for strings (one call
    per key and event on the hot path)."""
    if field in ("source", "type"):  # always there: the validator requires them
        return itemgetter(field)
    if field.startswith("properties."):
        key = field.removeprefix("properties.")

        def prop(event: Mapping[str, Any]) -> str:
            value = (event.get("properties") or {}).get(key)
            return value if type(value) is str else label(value)

        return prop

    def top(event: Mapping[str, Any]) -> str:
        value = event.get(field)
        return value if type(value) is str else label(value)

    return top


def number_reader(field: str) -> Read:
    """A numeric field as a float, None unless it is an int or float (not a bool)."""
    if field == "value":
        return lambda event: event.get("value")  # validated: a float or None
    read = reader(field)

    def number(event: Mapping[str, Any]) -> float | None:
        value = read(event)
        return float(value) if type(value) in (int, float) else None

    return number




@dataclass(frozen=True, slots=True)
class FieldSum(Sum):
    """:class:`Sum` of a field read by ``read`` (a property, or a number in a string)."""

    read: Read

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        value = self.read(event)
        if value is not None:
            state[self.name] += value


@dataclass(frozen=True, slots=True)
class FieldMin(Min):
    """:class:`Min` of a field read by ``read``; None while no event had one."""

    read: Read

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        self._fold(state, self.read(event))


@dataclass(frozen=True, slots=True)
class FieldMax(FieldMin):
    """:class:`Max` of a field read by ``read``; None while no event had one."""

    def pick(self, a: Any, b: Any) -> Any:
        return max(a, b)


@dataclass(frozen=True, slots=True)
class DistinctCount:
    """How many distinct values a field took, exactly up to ``limit`` values.

    The values are kept (a JSON object, for O(1) membership) because partials of one
    window from several partitions are merged by union; past ``limit`` a new value only
    sets ``<name>_truncated``, and the count is then a lower bound.
    """

    name: str
    read: Read
    limit: int = 1000

    @property
    def flag(self) -> str:
        return f"{self.name}_truncated"

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.name, self.flag)

    def initialize(self) -> State:
        return {self.name: {}, self.flag: False}

    def agg(self, state: State, event: Mapping[str, Any], ts: int) -> None:
        value = self.read(event)
        if type(value) is not str:
            value = label(value)
        seen = state[self.name]
        if value not in seen:
            if len(seen) < self.limit:
                seen[value] = 1
            else:
                state[self.flag] = True

    def merge(self, into: State, other: Mapping[str, Any]) -> None:
        seen = into[self.name]
        for value in other[self.name]:
            if value not in seen:
                if len(seen) < self.limit:
                    seen[value] = 1
                else:
                    into[self.flag] = True
        if other[self.flag]:
            into[self.flag] = True

    def result(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return {self.name: len(state[self.name]), self.flag: bool(state[self.flag])}

    def getters(self) -> tuple[tuple[str, Getter], ...]:
        name, flag = self.name, self.flag
        return ((name, lambda state: len(state[name])),
                (flag, lambda state: bool(state[flag])))

    def schema(self) -> dict[str, dict[str, Any]]:
        return {self.name: {"type": "integer"}, self.flag: {"type": "boolean"}}


__all__ = ["MISSING", "DistinctCount", "FieldMax", "FieldMin", "FieldSum", "key_reader",
           "label", "number_reader", "reader"]
