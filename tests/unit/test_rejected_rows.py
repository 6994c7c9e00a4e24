"""Rows a sink refused for good: one dead letter each, awaited before the state goes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
import pytest

from collector.engine.rejected import RejectedRows
from collector.models import DEADLETTER_REASON_HEADER
from collector.sinks import Row


def row(count: int = 1, *, revision: int = 0) -> Row:
    return Row(table="user_activity", window_start_ms=60_000, window_seconds=60, key=("u1",),
               values={"count": count}, final=True, latest_event_ms=60_500,
               revision=revision)


class Harness:
    """A producer whose acks the test releases, and the callbacks it records."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[None]] = []
        self.sent: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        self.released: list[Row] = []
        self.counted = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.rejected = RejectedRows(send=self.send, release=self.released.extend,
                                     spawn=self.spawn, on_dead_lettered=self.count)

    def count(self) -> None:
        self.counted += 1

    async def send(self, payload: bytes, headers: list[tuple[str, bytes]]
                   ) -> Awaitable[Any]:
        self.sent.append((payload, headers))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack

    def spawn(self, coro: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


async def test_state_is_released_only_once_the_dead_letter_is_acknowledged() -> None:
    h = Harness()
    h.rejected(row(3), "Data too long for column 'types'")
    await asyncio.sleep(0)
    assert len(h.sent) == 1 and h.released == [] and h.rejected.in_flight == 1
    record = orjson.loads(h.sent[0][0])
    assert record["reason"] == "sink_rejected"
    assert dict(h.sent[0][1])[DEADLETTER_REASON_HEADER] == b"sink_rejected"
    h.acks[0].set_result(None)
    await asyncio.gather(*h.tasks)
    assert h.released == [row(3)] and h.counted == 1 and h.rejected.in_flight == 0


async def test_the_same_refused_row_is_dead_lettered_once() -> None:
    h = Harness()
    h.rejected(row(3), "too long")
    h.rejected(row(3), "too long")  # written again (a resend after a rebalance)
    h.rejected(row(4, revision=1), "too long")  # a new revision is a new dead letter
    await asyncio.sleep(0)
    assert len(h.sent) == 2
    for ack in h.acks:
        ack.set_result(None)
    await asyncio.gather(*h.tasks)
    assert h.counted == 2


async def test_an_unacknowledged_dead_letter_keeps_the_state() -> None:
    h = Harness()
    h.rejected(row(3), "too long")
    await asyncio.sleep(0)
    h.acks[0].set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError):
        await h.tasks[0]
    assert h.released == [] and h.counted == 0 and h.rejected.in_flight == 0
    h.rejected(row(3), "too long")  # written again later: dead-lettered again
    await asyncio.sleep(0)
    assert len(h.sent) == 2
    h.acks[1].set_result(None)
    await h.tasks[1]
    assert h.released == [row(3)]
