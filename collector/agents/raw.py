"""Raw topics: every raw message is validated, enriched and forwarded once.

With direct delivery (the default) the consumer hands each fetch to
:func:`process_messages` and acks the messages once it returned and the records it
produced were delivered (``kafka.overlap_deliveries``: the next fetch is processed
meanwhile); otherwise the agent's ``take_events`` batches are acked by Faust after the
body returns, which is after every forwarded and changelog record was delivered.
Either way nothing is acked before its records are delivered, and Faust flushes the
producer before it commits offsets: at least once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from typing import Any, cast

import faust

from collector.adapters.topics import read_only_topics
from collector.agents.runtime import Runtime
from collector.engine.processor import RawRecord

log = logging.getLogger(__name__)

BATCH_MAX = 2000
BATCH_WITHIN = 0.05


def register(app: faust.App, runtime: Runtime) -> None:
    """The raw topics' agent (and, with direct delivery, the consumer's batch handler)."""
    kafka = runtime.settings.kafka
    raw_topic = read_only_topics(app, kafka.raw_topics, kafka.partitions)

    async def process_batch(records: Sequence[RawRecord],
                            settle: list[Awaitable[Any]] | None = None) -> None:
        """Validate, dead-letter, enrich and forward one batch of raw messages; with
        ``settle``, its deliveries are left there for the caller to await."""
        runtime.before_raw_batch()
        await runtime.processor.process_safely(records, runtime.output, settle)
        try:
            runtime.after_raw_batch(records[-1].timestamp if records else None)
        except Exception:  # an early flush is an optimisation; never stop the agent
            log.exception("checking for a drained backlog failed")

    async def process_messages(messages: list[Any]) -> list[Awaitable[Any]] | None:
        """The direct handler (``kafka.direct_delivery``): a fetch's raw messages as they
        are; a Faust ``Message`` has every field of :class:`RawRecord`.  With
        ``kafka.overlap_deliveries`` it returns the deliveries, and the consumer acks
        the batch once they are done, while it processes the next fetch."""
        if not kafka.overlap_deliveries:
            await process_batch(cast(list[RawRecord], messages))
            return None
        settle: list[Awaitable[Any]] = []
        await process_batch(cast(list[RawRecord], messages), settle)
        return settle

    if kafka.direct_delivery and hasattr(app, "direct_handlers"):
        for topic in kafka.raw_topics:
            app.direct_handlers[topic] = process_messages

    async def process_raw(stream: faust.StreamT[bytes]) -> None:
        """The raw topics' subscription; with direct delivery its stream stays empty."""
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN):  # type: ignore[attr-defined]
            records = [
                RawRecord(
                    e.message.topic, e.message.partition, e.message.offset,
                    e.message.key, e.message.value, e.message.headers,
                    e.message.timestamp,
                )
                for e in events
            ]
            await process_batch(records)

    app.agent(raw_topic, name="collector.raw")(process_raw)
