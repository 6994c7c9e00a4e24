"""Window agents: the merge of partials, and the flush timer.

The timer runs on every worker and touches only partitions that worker owns.  After a
rebalance the next tick re-indexes the recovered tables and flushes every window they
hold, so no final value is lost to a move or a restart.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import orjson

from collector import app, settings
from collector.observability.logs import where
from collector.streams.runtime import runtime

log = logging.getLogger(__name__)

partials_topic = app.topic(
    settings.kafka.partials_topic, key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw", partitions=settings.kafka.partitions,
)


@app.agent(partials_topic, name="collector.merge")
async def merge_partials(stream: faust.StreamT[bytes]) -> None:
    """Replace each slot's partial in its merged window; record slots' close marks."""
    async for events in stream.take_events(1000, within=0.1):  # type: ignore[attr-defined]
        for event in events:
            message = event.message
            try:
                record = orjson.loads(message.value)
                runtime.merger.apply(message.partition, record)
            except Exception:  # our own records: a bad one is a bug, never a reason to stop
                log.exception("bad partial at %s[%d]@%d", message.topic, message.partition,
                              message.offset,
                              extra=where(message.topic, message.partition, message.offset))
        try:
            runtime.merge_tick()
        except Exception:
            log.exception("merge tick failed; the flush timer retries")
        # in the producer before this batch is acked: a commit flushes the producer first
        await runtime.merger_state.submit()


@app.timer(interval=settings.windows.flush_interval_seconds, name="collector.flush_windows")
async def flush_windows() -> None:
    try:
        stats = await runtime.flush_windows()
        log.debug("flush: %s", stats)
    except Exception:
        log.exception("window flush failed; retrying next tick")


@app.on_partitions_revoked.connect  # type: ignore[misc,arg-type]
async def _forget_cached_state(sender: Any, revoked: Any = None, **kwargs: Any) -> None:
    runtime.on_rebalance()


@app.on_partitions_assigned.connect  # type: ignore[misc,arg-type]
async def _rescan_after_rebalance(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
    runtime.on_rebalanced()


PROGRESS_INTERVAL = 10.0


@app.timer(interval=PROGRESS_INTERVAL, name="collector.progress")
async def log_progress() -> None:
    """One INFO line per interval while events flow, so an operator sees the work."""
    totals = dict(runtime.processor.totals)
    last = runtime.last_progress
    runtime.last_progress = totals
    if totals == last:
        return
    rate = (totals["consumed"] - last.get("consumed", 0)) / PROGRESS_INTERVAL
    sinks = ", ".join(
        f"{name} {'ok' if h.healthy else 'FAILING'} ({h.pending} pending)"
        for name, h in runtime.sinks.health().items()
    )
    batches = totals["batches"] - last.get("batches", 0)
    per_batch = (totals["messages"] - last.get("messages", 0)) / batches if batches else 0.0
    log.info(
        "progress: %d events consumed (%.0f/s), %d valid, %d dead-lettered; "
        "%.0f messages per batch; sinks: %s",
        totals["consumed"], rate, totals["valid"], totals["dead_lettered"], per_batch, sinks,
        extra={"fields": {"progress": {**totals, "events_per_s": round(rate, 1),
                                       "messages_per_batch": round(per_batch, 1)}}},
    )
