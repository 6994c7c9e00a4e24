"""Small aiokafka helpers for tests: produce raw messages, read a topic until a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import Settings, settings_for_env
from collector.kafka.clients import client_kwargs
from tests.topics import create_topic


def settings_for(env: dict[str, str]) -> Settings:
    """The settings a worker started with ``env`` sees."""
    return settings_for_env(env)


async def produce(settings: Settings, topic: str,
                  items: Sequence[tuple[bytes | None, bytes]]) -> None:
    await create_topic(settings, topic)  # as a deployment would: kafka.partitions of them
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_until(
    settings: Settings,
    topics: list[str],
    done: Callable[[list[Any]], bool],
    limit_s: float = 60.0,
) -> list[Any]:
    """Read ``topics`` from the start until ``done(records)`` or the timeout."""
    consumer = AIOKafkaConsumer(
        *topics, **client_kwargs(settings), auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline and not done(records):
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, asked of the broker.

    A consumer's own metadata covers only what it subscribed to (Kafka answers a
    Metadata request for no topics with none), so ``partitions_for_topic`` after
    ``assign`` knows nothing yet.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])
