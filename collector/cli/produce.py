"""``collector produce``: write seeded synthetic events to the raw topics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from collector.config import Settings
from collector.devtools.generator import Generator, GeneratorConfig
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics


async def produce(
    settings: Settings, config: GeneratorConfig, rate: float = 0.0, linger_ms: int = 5
) -> dict[str, Any]:
    """Send every generated message, paced to ``rate`` events/s when > 0; return a summary."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        **client_kwargs(settings),
        linger_ms=linger_ms,
        max_request_size=max(1_048_576, settings.ingest.max_message_bytes * 4),
        acks="all",
    )
    await producer.start()
    generator = Generator(config)
    started = time.perf_counter()
    slots = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for message in generator:
            topic = settings.kafka.raw_topic(message.source)
            pending.append(await producer.send(topic, message.value, key=message.key))
            slots += message.slots
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate > 0:
                ahead = slots / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    elapsed = time.perf_counter() - started
    summary = {"produced": generator.expected.as_dict(), "seconds": round(elapsed, 3)}
    summary["events_per_second"] = round(generator.expected.events / elapsed, 1) if elapsed else 0
    summary["expected"] = {
        "valid": generator.expected.valid,
        "dead_lettered": dict(generator.expected.dead_letters),
    }
    return summary
