"""The dev broker under-reports ListOffsets(latest); fetch responses carry the truth."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from faust.types import TP

from collector.config import Settings
from collector.sources.kafka import client_kwargs
from collector.transport.highwater import fetch_highwaters

pytestmark = pytest.mark.integration


async def test_fetch_highwaters_reach_the_true_end(stack: Settings) -> None:
    topic = f"test.hw.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(**client_kwargs(stack), linger_ms=50)
    await producer.start()
    try:
        # batched sends: several records per batch, which is what ListOffsets misjudges
        futures = [await producer.send(topic, b"x" * 10, partition=0) for _ in range(500)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**client_kwargs(stack), group_id=None)
    await consumer.start()
    try:
        part = TopicPartition(topic, 0)
        reported = (await consumer.end_offsets([part]))[part]
    finally:
        await consumer.stop()
    tp = TP(topic, 0)
    fixed = await fetch_highwaters(client_kwargs(stack), {tp: reported})
    print(f"ListOffsets(latest) said {reported}, fetch high watermark {500}")
    assert reported <= 500
    assert fixed[tp] == 500, f"broker reported {reported}; fetch gave {fixed[tp]}"


async def test_empty_partitions_need_no_fetch(stack: Settings) -> None:
    tp = TP(f"test.hw.{uuid.uuid4().hex[:8]}", 0)
    assert await fetch_highwaters(client_kwargs(stack), {tp: 0}) == {tp: 0}
