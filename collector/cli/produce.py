"""``collector produce``: write seeded synthetic events to the raw topics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from collector.config import Settings
from collector.devtools.generator import Generator, GeneratorConfig
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics

#: report progress after this many events (a bar redraw is far dearer than a send)
PROGRESS_EVERY = 500


async def produce(
    settings: Settings, config: GeneratorConfig, rate: float = 0.0, linger_ms: int = 5,
    progress: Callable[[int, int], None] | None = None, report_every: float = 0.0,
    event_time_ms: int | None = None,
) -> dict[str, Any]:
    """Send every generated message, paced to ``rate`` events/s when > 0; return a summary.

    ``progress(events sent, events in all)`` is called every ``PROGRESS_EVERY`` events.
    With ``report_every`` > 0 a JSON line goes to stdout that often (s): a producer
    that runs for hours into a log file (the demo's) shows that it works.
    ``event_time_ms``: the generator's clock stands still there (see ``--event-time-ms``).
    """
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        **client_kwargs(settings),
        linger_ms=linger_ms,
        max_request_size=max(1_048_576, settings.ingest.max_message_bytes * 4),
        acks="all",
    )
    await producer.start()
    generator = (Generator(config) if event_time_ms is None
                 else Generator(config, clock=lambda: event_time_ms / 1000))
    started = time.perf_counter()
    slots = reported = 0
    next_report = started + report_every if report_every > 0 else float("inf")
    pending: list[asyncio.Future[Any]] = []
    try:
        for message in generator:
            topic = settings.kafka.raw_topic(message.source)
            pending.append(await producer.send(topic, message.value, key=message.key))
            slots += message.slots
            if progress is not None and slots - reported >= PROGRESS_EVERY:
                progress(slots, config.events)
                reported = slots
            if time.perf_counter() >= next_report:
                _report(generator, started)
                next_report += report_every
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if rate > 0:
                ahead = slots / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
        if progress is not None:
            progress(slots, config.events)
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


def _report(generator: Generator, started: float) -> None:
    elapsed = time.perf_counter() - started
    expected = generator.expected
    line = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "events": expected.events,
            "valid": expected.valid, "dead_lettered": sum(expected.dead_letters.values()),
            "events_per_second": round(expected.events / elapsed, 1) if elapsed else 0.0}
    print(json.dumps(line), flush=True)
