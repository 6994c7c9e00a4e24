"""Durable per-partition state behind a tiny interface.

Every write names its partition explicitly (a batch holds several partitions' events,
a timer none).  :class:`DictState` is the interface over a dict, for unit tests and
tools; the worker's implementation over a Faust table is
:class:`collector.adapters.state.FaustState`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any, Protocol


class State(Protocol):
    """Key-value state where every key lives in one partition."""

    def get(self, partition: int, key: str) -> dict[str, Any] | None: ...

    def set(self, partition: int, key: str, value: dict[str, Any]) -> None: ...

    def delete(self, partition: int, key: str) -> None: ...

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]: ...

    async def submit(self) -> list[Awaitable[Any]]:
        """Send what was written since the last call to the changelog; the futures."""
        ...


class DictState:
    """In-memory :class:`State` (keys are unique across partitions by construction)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.partitions: dict[str, int] = {}

    def get(self, partition: int, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def set(self, partition: int, key: str, value: dict[str, Any]) -> None:
        self.data[key] = value
        self.partitions[key] = partition

    def delete(self, partition: int, key: str) -> None:
        self.data.pop(key, None)
        self.partitions.pop(key, None)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.data.items()))

    async def submit(self) -> list[Awaitable[Any]]:
        return []
