"""The lean hand-off: run a delivery to its first suspension, then resume it faithfully.

The consumer relies on three things: an unblocked delivery finishes inside
``start_delivery`` (no task, no loop turn); a blocked one resumes exactly where it
stopped, values and exceptions included; and a blocked one is still interrupted by
``suspend_flow`` through ``wait_first``, as in Faust, so a rebalance is never stuck
behind a full stream buffer.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mode
import pytest

from collector.adapters.transport import LeanHandoffConsumer, Resumed, start_delivery


async def test_unblocked_delivery_finishes_without_a_task() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
    tasks_before = len(asyncio.all_tasks())

    async def deliver(message: int) -> None:
        await queue.put(message)  # room: put() does not suspend

    assert start_delivery(deliver, 7) is None
    assert queue.get_nowait() == 7  # done before any loop turn
    assert len(asyncio.all_tasks()) == tasks_before


async def test_blocked_delivery_resumes_where_it_stopped() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    steps: list[str] = []

    async def deliver(message: int) -> str:
        steps.append("before")
        await queue.put(message)  # full: suspends
        steps.append("after")
        return "delivered"

    rest = start_delivery(deliver, 1)
    assert isinstance(rest, Resumed)
    assert steps == ["before"]
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    assert not task.done()
    assert queue.get_nowait() == 0  # room again: the put wakes up
    assert await asyncio.wait_for(task, 1) == "delivered"
    assert steps == ["before", "after"]
    assert queue.get_nowait() == 1


async def test_values_sent_into_the_delivery_reach_it() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def deliver(_: Any) -> str:
        return (await fut) + "!"

    rest = start_delivery(deliver, None)
    assert rest is not None
    task = asyncio.ensure_future(rest)
    fut.set_result("value")
    assert await task == "value!"


async def test_errors_propagate_before_and_after_suspension() -> None:
    async def fails_at_once(_: Any) -> None:
        raise ValueError("decode failed")

    with pytest.raises(ValueError, match="decode failed"):
        start_delivery(fails_at_once, None)

    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails_later(_: Any) -> None:
        await fut
        raise KeyError("later")

    rest = start_delivery(fails_later, None)
    assert rest is not None
    task = asyncio.ensure_future(rest)
    fut.set_result(None)
    with pytest.raises(KeyError):
        await task


async def test_exception_thrown_in_is_handled_by_the_delivery() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def deliver(_: Any) -> str:
        try:
            await fut
        except RuntimeError:
            return "handled"
        return "not reached"

    rest = start_delivery(deliver, None)
    assert rest is not None
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    fut.set_exception(RuntimeError("boom"))
    assert await task == "handled"


async def test_a_blocked_delivery_is_interrupted_by_suspend_flow() -> None:
    """The rebalance case: the stream buffer is full and nobody drains it."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    queue.put_nowait(0)
    cleaned_up: list[bool] = []

    async def deliver(message: int) -> None:
        try:
            await queue.put(message)
        finally:
            cleaned_up.append(True)

    service = mode.Service()
    suspend_flow = asyncio.Event()
    rest = start_delivery(deliver, 1)
    assert rest is not None
    asyncio.get_running_loop().call_later(0.05, suspend_flow.set)
    waiter = suspend_flow.wait()
    result = await asyncio.wait_for(service.wait_first(rest, waiter), 2)
    assert result.done == [waiter]
    await asyncio.sleep(0)  # let the cancelled delivery run its finally
    assert cleaned_up == [True]
    assert queue.qsize() == 1 and queue.get_nowait() == 0  # the message was not put


def test_the_worker_transport_uses_the_lean_consumer() -> None:
    from faust.transport import by_url

    from collector.adapters import transport

    assert transport.Transport.Consumer is LeanHandoffConsumer
    # found through Faust's public extension point (the package's entry point)
    assert by_url("collector://localhost:9092") is transport.Transport


async def test_a_callback_returning_a_plain_awaitable_is_awaited_as_usual() -> None:
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    rest = start_delivery(lambda _: fut, None)
    assert rest is fut
    fut.set_result("ok")
    assert await rest == "ok"


@pytest.mark.parametrize("wait_ms", [None, 100])
async def test_the_consumer_waits_on_an_empty_fetch_as_configured(wait_ms: int | None) -> None:
    """Faust builds its aiokafka consumer with fetch_max_wait_ms=1500, which leaves the
    worker without a fetch for 1.5 s whenever the one in flight asked only for empty
    partitions (the raw ones still held records): kafka.fetch_max_wait_ms sets it."""
    from collector.adapters.app import new_app
    from collector.adapters.transport import ConsumerThread
    from collector.config import Settings

    settings = Settings() if wait_ms is None else Settings(kafka={"fetch_max_wait_ms": wait_ms})
    app = new_app(settings)
    assert isinstance(app.consumer, LeanHandoffConsumer)
    thread = app.consumer._new_consumer_thread()
    assert isinstance(thread, ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == (1500 if wait_ms is None else wait_ms)
    await consumer.stop()
