"""Raw topics: every raw message is validated, enriched and forwarded once.

With direct delivery (the default) the consumer hands each fetch to
:func:`process_messages` and acks the messages when it returns; otherwise the agent's
``take_events`` batches are acked by Faust after the body returns.  Either way a batch
returns only after every forwarded and changelog record was delivered, and Faust
flushes the producer before it commits offsets: at least once, nothing acked early.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

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


async def process_batch(records: Sequence[RawRecord]) -> None:
    """Validate, dead-letter, enrich and forward one batch of raw messages."""
    rt = runtime
    await rt.processor.process_safely(records, rt.output)
    try:
        rt.after_raw_batch()
    except Exception:  # an early flush is an optimisation; never stop the agent
        log.exception("checking for a drained backlog failed")


async def process_messages(messages: list[Any]) -> None:
    """The direct handler (``kafka.direct_delivery``): a fetch's raw messages as they
    are; a Faust ``Message`` has every field of :class:`RawRecord`."""
    await process_batch(cast(list[RawRecord], messages))


if settings.kafka.direct_delivery and hasattr(app, "direct_handlers"):
    for _topic in settings.kafka.raw_topics:
        app.direct_handlers[_topic] = process_messages


@app.agent(raw_topic, name="collector.raw")
async def process_raw(stream: faust.StreamT[bytes]) -> None:
    """The raw topics' subscription; with direct delivery its stream stays empty."""
    async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):  # type: ignore[attr-defined]
        records = [
            RawRecord(
                e.message.topic, e.message.partition, e.message.offset,
                e.message.key, e.message.value, e.message.headers,
            )
            for e in events
        ]
        await process_batch(records)
