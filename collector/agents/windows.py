"""Window agents: the merge of partials, and the flush timer.

The timer runs on every worker and touches only partitions that worker owns.  After a
rebalance the next tick re-indexes the recovered tables and flushes every window they
hold, so no final value is lost to a move or a restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from collector.adapters.checkpoint import checkpoint_before_handover
from collector.agents.runtime import Runtime
from collector.engine.schedule import FixedRate
from collector.observability.logs import where

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 10.0


def register(app: faust.App, runtime: Runtime) -> None:
    """The merge agent, the flush and progress timers, and the rebalance hooks."""
    kafka = runtime.settings.kafka
    partials_topic = app.topic(
        kafka.partials_topic, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=kafka.partitions,
    )

    async def merge_partials(stream: faust.StreamT[bytes]) -> None:
        """Replace each slot's partial in its merged window; record slots' close marks."""
        async for events in stream.take_events(1000, within=0.1):  # type: ignore[attr-defined]
            if runtime.fenced():
                # fetched before a freeze: the partition's new owner merges them; applied
                # here they wrote a stale merged entry to its changelog and rows to sinks
                continue
            for event in events:
                message = event.message
                try:
                    record = orjson.loads(message.value)
                    runtime.merger.apply(message.partition, record)
                except Exception:  # our own records: a bad one is a bug, never a reason to stop
                    log.exception("bad partial at %s[%d]@%d", message.topic,
                                  message.partition, message.offset,
                                  extra=where(message.topic, message.partition,
                                              message.offset))
            try:
                runtime.merge_tick()
            except Exception:
                log.exception("merge tick failed; the flush timer retries")
            # in the producer before this batch is acked: a commit flushes the producer first
            await runtime.merger_state.submit()

    schedule = FixedRate(runtime.settings.windows.flush_interval_seconds)

    async def flush_windows() -> None:
        """Flush every interval from start to start (engine/schedule.py).  A task, not
        a Faust timer: a timer polling every 0.25 s warned "is overlapping" whenever a
        flush took longer than that, i.e. on most flushes."""
        while not app.should_stop:
            await app.sleep(schedule.poll_s)
            if app.should_stop or not schedule.due(time.monotonic()):
                continue
            try:
                stats = await runtime.flush_windows()
                log.debug("flush: %s", stats)
            except Exception:
                log.exception("window flush failed; retrying next tick")
            finally:
                schedule.ran(time.monotonic())

    async def forget_cached_state(sender: Any, revoked: Any = None, **kwargs: Any) -> None:
        fenced = runtime.fenced()  # frozen past its session: what it holds is stale
        if not fenced:
            await checkpoint_before_handover(app, kafka.shutdown_flush_timeout)
        runtime.on_rebalance(drop=fenced)

    async def rescan_after_rebalance(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
        runtime.on_rebalanced()

    async def log_progress() -> None:
        progress_line(runtime)

    app.agent(partials_topic, name="collector.merge")(merge_partials)
    app.task(flush_windows, traced=False)
    app.timer(interval=PROGRESS_INTERVAL, name="collector.progress")(log_progress)
    app.on_partitions_revoked.connect(forget_cached_state)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(rescan_after_rebalance)  # type: ignore[arg-type]


def progress_line(runtime: Runtime) -> None:
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
