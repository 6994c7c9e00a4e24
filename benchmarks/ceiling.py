"""Ceiling: a plain aiokafka consumer, fresh group, from the beginning, orjson per message.

Runs in the harness process; its CPU time is this process's CPU time over the read.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from benchmarks.common import new_tag
from collector.config import Settings
from collector.kafka.clients import client_kwargs


async def run_ceiling(settings: Settings, messages: int, events: int,
                      limit_s: float = 600.0) -> dict[str, Any]:
    """Read ``messages`` messages from the raw topics and decode each; time first to last."""
    consumer = AIOKafkaConsumer(
        *settings.kafka.raw_topics, **client_kwargs(settings),
        group_id=new_tag("ceil"), auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    seen = decoded = failed = 0
    first = last = cpu0 = 0.0
    deadline = time.monotonic() + limit_s
    try:
        while seen < messages and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                if not first:
                    first, cpu0 = time.perf_counter(), time.process_time()
                for record in records:
                    try:
                        orjson.loads(record.value or b"")
                        decoded += 1
                    except orjson.JSONDecodeError:
                        failed += 1
                seen += len(records)
            last = time.perf_counter()
        cpu1 = time.process_time()
    finally:
        await consumer.stop()
    if seen < messages:
        raise RuntimeError(f"ceiling: read {seen} of {messages} messages in {limit_s}s")
    elapsed = max(last - first, 1e-9)
    return {
        "messages": seen,
        "events": events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "messages_per_s": round(seen / elapsed, 1),
        "cpu_us_per_event": round((cpu1 - cpu0) / events * 1e6, 2),
        "undecodable": failed,
    }
