"""Bulk forwarding: records grouped into record batches per partition, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from collector.streams.output import Batches


class Recorder:
    """Stands in for KafkaOutput: keeps what would have been handed to the producer."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int, BatchBuilder]] = []
        self.sends: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Any,
                   partition: int | None = None) -> Awaitable[Any]:
        self.sends.append((topic, key, value))
        return _done()

    async def send_batch(self, batch: BatchBuilder, topic: str, partition: int
                         ) -> Awaitable[Any]:
        self.batches.append((topic, partition, batch))
        return _done()


def _done() -> asyncio.Future[None]:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(None)
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
