"""Where the engine's records go: the interfaces a Kafka producer adapter implements."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

#: Kafka headers as aiokafka takes them
Headers = list[tuple[str, bytes]]


class Output(Protocol):
    """Where forwarded records go: a Kafka producer in the worker."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None,
        partition: int | None = None,
    ) -> Awaitable[Any]: ...

    async def batches(self, topic: str) -> Batches: ...


class Batches(Protocol):
    """Keyed records collected into record batches, sent together."""

    def add(self, key: bytes, value: bytes) -> None: ...

    async def submit(self) -> list[Awaitable[Any]]: ...
