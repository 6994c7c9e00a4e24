"""The raw-topic agent: every raw message is validated, enriched and forwarded once.

Batches from ``take_events`` are acked by Faust only after the body returns, and the
body returns only after every forwarded record was accepted by the producer, whose
buffer Faust flushes before it commits offsets: at least once, nothing acked early.
"""

from __future__ import annotations

import logging

import faust

from collector import app, settings
from collector.streams.processor import RawRecord
from collector.streams.runtime import runtime

log = logging.getLogger(__name__)

BATCH_MAX = 2000
BATCH_WITHIN = 0.05

raw_topic = app.topic(
    *settings.kafka.raw_topics,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.kafka.partitions,
)
enriched_topic = app.topic(
    settings.kafka.enriched_topic, key_serializer="raw", value_serializer="raw",
    partitions=settings.kafka.partitions,
)
deadletter_topic = app.topic(
    settings.kafka.deadletter_topic, key_serializer="raw", value_serializer="raw",
    partitions=settings.kafka.partitions,
)


@app.agent(raw_topic, name="collector.raw")
async def process_raw(stream: faust.StreamT[bytes]) -> None:
    """Validate, dead-letter, enrich and forward each batch of raw messages."""
    rt = runtime
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):  # type: ignore[attr-defined]
        records = [
            RawRecord(
                e.message.topic, e.message.partition, e.message.offset,
                e.message.key, e.message.value,
            )
            for e in events
        ]
        await rt.processor.process_safely(records, rt.output)
        try:
            rt.after_raw_batch()
        except Exception:  # an early flush is an optimisation; never stop the agent
            log.exception("checking for a drained backlog failed")
