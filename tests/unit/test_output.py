"""Bulk forwarding: records grouped into record batches per partition, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from collector.adapters.output import Batches, KafkaOutput
from collector.engine.delivery import Stopping


class Recorder(KafkaOutput):
    """KafkaOutput minus the producer: keeps what would have been handed to it."""

    def __init__(self) -> None:
        super().__init__(None, max_backoff=0.01)  # type: ignore[arg-type]
        self.batches: list[tuple[str, int, BatchBuilder]] = []
        self.sends: list[tuple[str, bytes | None, bytes | None]] = []

    async def send_once(self, topic: str, key: bytes | None, value: bytes | None,
                        headers: Any, partition: int | None = None) -> Awaitable[Any]:
        self.sends.append((topic, key, value))
        return _done(partition or 0, len(self.sends) - 1)

    async def send_batch(self, batch: BatchBuilder, topic: str, partition: int
                         ) -> Awaitable[Any]:
        self.batches.append((topic, partition, batch))
        return _done(partition, 0)


def _done(partition: int, offset: int) -> asyncio.Future[Any]:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(SimpleNamespace(partition=partition, offset=offset))
    return fut


def records_of(batch: BatchBuilder) -> list[tuple[bytes, bytes]]:
    data = bytes(batch._build())
    return [(r.key, r.value) for r in DefaultRecordBatch(bytearray(data))]


async def test_records_go_to_the_key_partition_in_order_and_full_batches_split() -> None:
    partitioner = DefaultPartitioner()
    parts = [0, 1, 2, 3]

    def partition_of(key: bytes) -> int:
        return int(partitioner(key, parts, parts))

    out = Recorder()
    batches = Batches("enriched", partition_of, lambda: BatchBuilder(2048, 0),
                      out)  # type: ignore[arg-type]
    sent = [(f"u{i % 7}".encode(), b"x" * 100 + str(i).encode()) for i in range(300)]
    for key, value in sent:
        batches.add(key, value)
    futures = await batches.submit()
    assert len(futures) == len(out.batches) > 4  # 2 KB batches: some filled up
    got: dict[int, list[tuple[bytes, bytes]]] = {}
    for topic, partition, batch in out.batches:
        assert topic == "enriched"
        got.setdefault(partition, []).extend(records_of(batch))
    for partition in parts:
        expected = [(k, v) for k, v in sent if partition_of(k) == partition]
        assert got.get(partition, []) == expected
    assert await batches.submit() == []  # nothing sent twice


async def test_without_partition_metadata_each_record_is_sent_alone() -> None:
    out = Recorder()
    batches = Batches("enriched", None, None, out)  # type: ignore[arg-type]
    batches.add(b"u1", b"a")
    batches.add(b"u2", b"b")
    assert len(await batches.submit()) == 2
    assert out.sends == [("enriched", b"u1", b"a"), ("enriched", b"u2", b"b")]
    assert out.batches == []


class Refusing(Recorder):
    """The broker refuses the first ``fail`` attempts (batches and single records)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    def _maybe_fail(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        if self.fail <= 0:
            return fut
        self.fail -= 1
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaError("topic refuses writes"))
        return failed

    async def send_once(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._maybe_fail(await super().send_once(*args, **kwargs))  # type: ignore[arg-type]

    async def send_batch(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self._maybe_fail(await super().send_batch(*args, **kwargs))  # type: ignore[arg-type]


async def test_a_refused_record_is_produced_again_until_acked() -> None:
    out = Refusing(fail=3)
    fut = await out.send("dead", b"k", b"v", None)
    meta = await asyncio.wait_for(fut, 5)
    assert out.sends == [("dead", b"k", b"v")] * 4 and meta.offset == 3
    assert out.health.topics["dead"].failures == 3
    assert out.health.failing() == {}  # healthy again once delivered


async def test_a_refused_batch_is_produced_again_with_the_newest_values() -> None:
    out = Refusing(fail=1)
    batches = Batches("changelog", lambda key: 0, lambda: BatchBuilder(2048, 0), out)
    batches.add(b"a", b"1")
    batches.add(b"b", b"1")
    newest = {b"a": b"3"}  # "a" was written again while the batch was in flight
    delivered: list[tuple[int, int]] = []
    futures = await batches.submit(on_delivered=lambda p, o: delivered.append((p, o)),
                                   refresh=lambda k, v: (k, newest.get(k, v)))
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert out.sends == [("changelog", b"a", b"3"), ("changelog", b"b", b"1")]
    assert delivered == [(0, 1)]  # the offset of the last record produced again


async def test_health_shows_a_topic_failing_while_it_refuses() -> None:
    out = Refusing(fail=10**6)
    fut = await out.send("dead", b"k", b"v", None)
    await asyncio.sleep(0.2)
    failing = out.health.failing()
    assert set(failing) == {"dead"} and "refuses writes" in failing["dead"].last_error
    out.fail = 0
    await asyncio.wait_for(fut, 5)
    assert out.health.failing() == {}


class DownBroker:
    """An app whose producer refuses every send, and that can be told to stop."""

    def __init__(self) -> None:
        self.should_stop = False
        self.attempts = 0
        self.producer = SimpleNamespace(send=self._send)

    async def _send(self, *args: Any) -> Awaitable[Any]:
        self.attempts += 1
        raise KafkaError("broker unreachable")


async def test_a_send_retrying_against_a_down_broker_gives_up_once_the_worker_stops() -> None:
    """SIGTERM while a produce is retried: the retry stops with ``Stopping`` (nothing was
    acked, so a restart redoes it) instead of keeping the worker alive for ever."""
    app = DownBroker()
    out = KafkaOutput(app, max_backoff=0.01)  # type: ignore[arg-type]
    sending = asyncio.ensure_future(out.send("enriched", b"k", b"v", None))
    await asyncio.sleep(0.3)
    assert not sending.done() and app.attempts > 1  # retrying while running
    app.should_stop = True
    with pytest.raises(Stopping, match="producing to enriched failed while stopping"):
        await asyncio.wait_for(sending, 5)


async def test_a_delivery_retried_after_a_refusal_gives_up_once_the_worker_stops() -> None:
    out = Refusing(fail=10**6)
    stopping = False
    out._stopping = lambda: stopping  # type: ignore[method-assign]
    fut = await out.send("dead", b"k", b"v", None)
    await asyncio.sleep(0.1)
    assert not fut.done()  # type: ignore[attr-defined]
    stopping = True
    with pytest.raises(Stopping, match="delivery to dead failed while stopping"):
        await asyncio.wait_for(fut, 5)
