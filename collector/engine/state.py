"""Durable per-partition state behind a tiny interface.

Every write names its partition explicitly (a batch holds several partitions' events,
a timer none).  :class:`DictState` is the interface over a dict, for unit tests and
tools; the worker's implementation over a Faust table is
:class:`collector.adapters.state.FaustState`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import Any, Protocol


def _offsets(value: dict[str, Any]) -> dict[str, int] | None:
    """What an entry has absorbed: ``offs`` (slot -> offset) or one ``off``."""
    offs = value.get("offs")
    if isinstance(offs, dict):
        return offs
    off = value.get("off")
    return {"": off} if isinstance(off, int) else None


def superseded(new: dict[str, Any] | None, held: dict[str, Any] | None) -> bool:
    """Whether a changelog record ``new`` absorbed strictly less than the ``held`` value
    of its key, so that applying it would take the state back.

    Only a zombie writes such a record: a worker frozen past its session wakes up in the
    middle of a batch, which then completes and writes the changelog of partitions that
    moved (measured: a user window recovered with 3 of its 6 events, final and short).
    Its owner's own writes never absorb less, since offsets only grow; a tombstone, a
    first write and a value without offsets are always applied.
    """
    if new is None or held is None:
        return False
    mine, theirs = _offsets(new), _offsets(held)
    if mine is None or theirs is None or mine == theirs:
        return False
    return (all(off <= theirs.get(slot, -1) for slot, off in mine.items())
            and any(off > mine.get(slot, -1) for slot, off in theirs.items()))


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
