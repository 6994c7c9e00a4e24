"""Direct delivery: a fetch's messages of a raw topic go to its handler as one list.

Faust's stream path costs an event, a queue, a stream iteration, a ``take()`` buffer
and a per-event ack per message (about a quarter of the worker's CPU with one event
per message, measured).  Here the messages are tracked as unacked while the handler
runs and acked once it returned and the deliveries it returned are done
(``kafka.overlap_deliveries``), in order; rebalances and shutdowns wait for them
through Faust's ``wait_empty`` as they wait for an agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from collector.engine.delivery import Stopping

#: a direct handler: processes a batch of messages of its topic, raises nothing; it
#: may return the deliveries its batch is acked after (None: ack at once)
DirectHandler = Callable[[list[Any]], Awaitable[Sequence[Awaitable[Any]] | None]]
#: messages handed to a direct handler at once (a fetch returns up to max_poll_records)
DIRECT_BATCH_MAX = 2000


class DirectDelivery:
    """The direct-delivery half of :class:`collector.adapters.transport.LeanHandoffConsumer`
    (a mixin over Faust's aiokafka consumer, whose attributes it uses)."""

    if TYPE_CHECKING:
        app: Any
        log: Any
        suspend_flow: asyncio.Event
        _unacked_messages: Any

        def ack(self, message: Any) -> bool: ...
        def check_frozen(self, session: float) -> None: ...
        def fenced(self) -> bool: ...
        def _on_message_in(self, tp: Any, offset: int, message: Any) -> None: ...

    #: the last direct batch whose deliveries are awaited before it is acked
    _settling: asyncio.Future[None] | None = None
    #: partition -> the generation in which one of its direct batches failed: nothing
    #: of it is acked after that (an ack past the failed batch would commit past it)
    _failed_tps: dict[Any, int] | None = None

    async def _deliver_direct(self, batch: list[Any]) -> None:
        """Hand a fetched batch of one direct topic straight to its handler.

        The messages are tracked as unacked first, so a rebalance or a shutdown waits
        (``wait_empty``) until the handler has acked them; the handler runs shielded,
        so stopping the fetcher cannot cut a batch in half.  A batch fetched before
        the flow was suspended for a rebalance is dropped unprocessed and unacked:
        after the rebalance its partitions are fetched again from the committed offset,
        as Faust does with messages a suspended delivery did not hand over.
        """
        app = self.app
        if self.suspend_flow.is_set() or not app.flow_control.is_active():
            return
        self.check_frozen(float(app.conf.broker_session_timeout))
        if self.fenced():  # dropped unacked, like a batch fetched before a rebalance
            return
        generation = app.consumer_generation_id
        handlers: dict[str, DirectHandler] = app.direct_handlers  # type: ignore[attr-defined]
        add_unacked = self._unacked_messages.add
        monitor = batch_monitor(app)
        on_message_in = self._on_message_in
        # What a Faust stream would note per event; without it Faust's stall check
        # (verify_event_path) says "Stream has not started processing" at ERROR.
        inbound, now = app.monitor.stream_inbound_time, time.monotonic()
        by_tp: dict[Any, list[Any]] = {}
        by_topic: dict[str, list[Any]] = {}
        for message in batch:
            if message.generation_id != generation:  # fetched before a rebalance
                continue
            message.tracked = True
            add_unacked(message)
            tp = message.tp
            inbound[tp] = now
            if monitor is None:
                on_message_in(tp, message.offset, message)
            else:
                run = by_tp.get(tp)
                if run is None:
                    run = by_tp[tp] = []
                run.append(message)
            by_topic.setdefault(message.topic, []).append(message)
        for tp, run in by_tp.items():  # (the sensors in one call per partition)
            monitor.on_messages_in(tp, run)  # type: ignore[union-attr]
        for topic, messages in by_topic.items():
            await asyncio.shield(asyncio.ensure_future(
                self._handle_direct(handlers[topic], messages)))

    async def _handle_direct(self, handler: DirectHandler, messages: list[Any]) -> None:
        """Run the handler, then ack: offsets become committable only once it returned
        and the deliveries it returned are done.

        Those deliveries are awaited in a task while the fetch loop goes on, so the
        next batch is processed during the broker's round trip instead of after it.
        Acks stay in order: Faust commits the first run of consecutive acked offsets
        whatever lies below it, so a batch acked before the one ahead of it could
        commit past that one.  Hence at most one batch settles at a time, and each waits
        for the one before it.

        The handler raises nothing but a cancellation (it dead-letters what it cannot
        process); if it raises anyway, the batch is dropped from the unacked set without
        an ack, so no commit passes its first offset, and ``/livez`` fails so the
        orchestrator restarts the worker, which reprocesses from the committed offset.
        """
        try:
            settle = await handler(messages)
        except Exception as exc:  # Stopping included
            self._failed(messages, exc)
            return
        previous, self._settling = self._settling, None
        if previous is not None:  # (waited for, not awaited: its failure is its own)
            await asyncio.wait([previous])
        if settle:
            self._settling = asyncio.ensure_future(self._settle(settle, messages))
        else:
            self._ack_direct(messages)

    async def _settle(self, settle: Sequence[Awaitable[Any]], messages: list[Any]) -> None:
        try:
            await asyncio.gather(*settle)
        except Exception as exc:  # Stopping included
            self._failed(messages, exc)
            return
        except BaseException:  # cancelled (the loop is closing): not acked either
            self._failed(messages, None)
            raise
        self._ack_direct(messages)

    def _failed(self, messages: list[Any], exc: Exception | None) -> None:
        """Leave a batch unacked, and its partitions unacked for this generation
        (``exc`` None: its deliveries were cancelled)."""
        if exc is None or isinstance(exc, Stopping):  # a restart redoes it
            self.log.warning("stopping with %d messages unprocessed (%s): not committed, "
                             "the next start processes them", len(messages),
                             exc or "deliveries cancelled")
        else:
            self.log.error("direct handler raised on %d messages; nothing of them will "
                           "be committed, the worker needs a restart", len(messages),
                           exc_info=exc)
            self.app.fetcher_failure = (  # type: ignore[attr-defined]
                f"direct handler raised {type(exc).__name__}: {exc}"[:300])
        if self._failed_tps is None:
            self._failed_tps = {}
        generation = self.app.consumer_generation_id
        for message in messages:
            self._unacked_messages.discard(message)
            self._failed_tps[message.tp] = generation

    def _ack_direct(self, messages: list[Any]) -> None:
        ack = self.ack
        monitor = batch_monitor(self.app)
        on_message_out = None if monitor is not None else self.app.sensors.on_message_out
        failed = self._failed_tps
        generation = self.app.consumer_generation_id
        out = 0
        for message in messages:
            if failed and failed.get(message.tp) == generation:
                self._unacked_messages.discard(message)
                continue
            ack(message)
            if on_message_out is not None:
                on_message_out(message.tp, message.offset, message)
            else:
                out += 1
        if out:
            monitor.on_messages_out(out)  # type: ignore[union-attr]


def batch_monitor(app: Any) -> Any:
    """The app's monitor if it is the only sensor and counts runs of messages at once
    (:class:`collector.adapters.sensors.CachedPrometheusMonitor`), else None: then each
    message goes through Faust's sensor delegate, two calls per message (about 1.5 µs,
    measured, with one event per message)."""
    monitor = getattr(app, "monitor", None)
    if not hasattr(monitor, "on_messages_in"):
        return None
    sensors = list(getattr(app, "sensors", ()))
    return monitor if sensors == [monitor] else None


__all__ = ["DIRECT_BATCH_MAX", "DirectDelivery", "DirectHandler", "batch_monitor"]
