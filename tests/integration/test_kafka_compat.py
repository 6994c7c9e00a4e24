"""The local broker is Apache Kafka: clients nobody here wrote work against it, and it
behaves as Kafka does where the old dev broker did not (offsets, transactions).

kcat (librdkafka, Debian's package) and confluent-kafka (librdkafka, PyPI) are the tools
a user reaches for first; both must produce and consume on the local stack.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from tests.programs import ensure_program
from tests.topics import create_topic

pytestmark = pytest.mark.integration


def bootstrap(settings: Settings) -> str:
    return ",".join(settings.kafka.bootstrap_servers)


async def new_topic(settings: Settings, partitions: int = 3) -> str:
    return await create_topic(settings, f"test.compat.{uuid.uuid4().hex[:10]}", partitions)


def kcat(*args: str, stdin: str | None = None, timeout: float = 60) -> str:
    exe = ensure_program("kcat", "kcat")
    done = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"kcat {' '.join(args)} failed: {done.stderr}"
    return done.stdout


async def test_kcat_lists_produces_and_consumes(stack: Settings) -> None:
    topic = await new_topic(stack)
    listing = orjson.loads(kcat("-L", "-J", "-b", bootstrap(stack)))
    assert topic in {t["topic"] for t in listing["topics"]}
    assert listing["brokers"][0]["name"].endswith(stack.kafka.bootstrap_servers[0].split(":")[1])

    lines = "".join(f"k{i}\tvalue-{i}\n" for i in range(50))
    kcat("-P", "-b", bootstrap(stack), "-t", topic, "-K", "\t", stdin=lines)
    out = kcat("-C", "-b", bootstrap(stack), "-t", topic, "-e", "-q", "-f", "%k\t%s\n")
    got = sorted(line.split("\t") for line in out.splitlines())
    assert got == sorted([f"k{i}", f"value-{i}"] for i in range(50))

    # and what kcat wrote, aiokafka reads: same keys in the same partitions
    consumer = AIOKafkaConsumer(topic, **client_kwargs(stack), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        seen: list[tuple[bytes | None, bytes | None]] = []
        while len(seen) < 50:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 15)
            seen += [(r.key, r.value) for recs in batch.values() for r in recs]
    finally:
        await consumer.stop()
    assert sorted(seen) == sorted((f"k{i}".encode(), f"value-{i}".encode()) for i in range(50))


async def test_confluent_kafka_round_trip(stack: Settings) -> None:
    from confluent_kafka import Consumer, Producer

    topic = await new_topic(stack)
    reports: list[tuple[str | None, int]] = []
    producer = Producer({"bootstrap.servers": bootstrap(stack), "enable.idempotence": True})
    for i in range(100):
        producer.produce(topic, key=f"u{i % 7}", value=f"v{i}",
                         on_delivery=lambda err, msg: reports.append((err, msg.offset())))
    assert producer.flush(30) == 0
    assert len(reports) == 100 and all(err is None for err, _ in reports)

    consumer = Consumer({"bootstrap.servers": bootstrap(stack), "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            for msg in consumer.consume(100, timeout=1.0):
                assert msg.error() is None, msg.error()
                values.append(msg.value())
            if len(values) >= 100:
                break
    finally:
        consumer.close()
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(100))


async def test_end_offsets_agree_with_fetch_high_watermarks(stack: Settings) -> None:
    """What the old broker got wrong: ListOffsets(latest) is the high watermark."""
    topic = await new_topic(stack, partitions=2)
    producer = AIOKafkaProducer(**client_kwargs(stack), linger_ms=5)
    await producer.start()
    try:
        for _round in range(5):  # several record batches per partition
            futures = [await producer.send(topic, b"x" * 100, partition=i % 2)
                       for i in range(301)]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    parts = [TopicPartition(topic, p) for p in range(2)]
    consumer = AIOKafkaConsumer(**client_kwargs(stack), enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        fetched: dict[TopicPartition, int] = {}
        while len(fetched) < len(parts):
            await asyncio.wait_for(consumer.getmany(timeout_ms=500), 15)
            fetched |= {tp: hw for tp in parts if (hw := consumer.highwater(tp)) is not None}
    finally:
        await consumer.stop()
    assert ends == fetched == {parts[0]: 755, parts[1]: 750}


async def test_a_transaction_commits_records_and_offsets_atomically(stack: Settings) -> None:
    topic = await new_topic(stack, partitions=1)
    group = f"g-{topic}"
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(**client_kwargs(stack), transactional_id=f"tx-{topic}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, b"committed-1")
            await producer.send(topic, b"committed-2")
            await producer.send_offsets_to_transaction({tp: 42}, group)
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(**client_kwargs(stack), group_id=group,
                                isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        assert await consumer.committed(tp) == 42  # the offsets went in with the records
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            batch = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=500), 15)
            values += [r.value for r in batch.get(tp, []) if r.value is not None]
    finally:
        await consumer.stop()
    assert values == [b"committed-1", b"committed-2"]  # never the aborted record
