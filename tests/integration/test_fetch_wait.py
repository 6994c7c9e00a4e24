"""The fetch wait the worker chooses per raw batch reaches the broker with the next fetch
(collector.engine.schedule.FetchWait; adapters.transport.set_fetch_max_wait)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.protocol.fetch import FetchRequest

from collector.adapters.app import new_app
from collector.adapters.transport import set_fetch_max_wait
from collector.config import Settings
from tests.topics import create_topic

pytestmark = pytest.mark.integration


async def test_a_wait_set_while_running_goes_out_with_the_next_fetch(stack: Settings) -> None:
    topic = await create_topic(stack, f"test.fetchwait.{uuid.uuid4().hex[:10]}", 1)
    app = new_app(stack.model_copy(update={
        "kafka": stack.kafka.model_copy(update={"fetch_max_wait_ms": 700})}))
    thread = app.consumer._thread
    assert set_fetch_max_wait(app.consumer, 100) is False  # not started: nothing to set
    aio = thread._create_worker_consumer(app.transport)
    waits: list[int] = []
    send = aio._client.send

    async def spy(node_id: int, request: Any, **kwargs: Any) -> Any:
        if isinstance(request, FetchRequest):
            waits.append(request._max_wait_ms)
        return await send(node_id, request, **kwargs)

    aio._client.send = spy
    await aio.start()
    thread._consumer = aio
    try:
        aio.assign([TopicPartition(topic, 0)])
        await aio.seek_to_beginning()
        async with asyncio.timeout(30):
            while not waits:  # the topic is empty: each fetch waits the whole wait
                await aio.getmany(timeout_ms=200)
            assert waits[0] == 700  # the configured one, to start with
            assert set_fetch_max_wait(app.consumer, 100) is True
            before = len(waits)
            while 100 not in waits[before:]:  # the fetch in flight keeps its 700
                await aio.getmany(timeout_ms=200)
        assert set(waits[before:]) <= {700, 100}
        assert aio._fetch_max_wait_ms == 100  # and a restarted fetcher starts with it
    finally:
        thread._consumer = None
        await aio.stop()
