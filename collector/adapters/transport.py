"""A lean consumer-to-stream hand-off that stays interruptible on rebalance.

Faust's fetcher hands every message to its streams through
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks, an
``asyncio.wait`` and three cancellations per message, so that a rebalance
(``suspend_flow``) can interrupt a delivery blocked on a full stream buffer, on flow
control or on a full producer buffer.  Almost always the delivery blocks on nothing:
the callback only decodes the message and puts it on a queue with room.

:func:`start_delivery` runs the callback up to its first suspension, without a task.
If it finished, that was the whole hand-off.  If it suspended, the delivery goes on
in a task exactly where it stopped, and :class:`LeanHandoffConsumer` waits for it
with ``wait_first`` against ``suspend_flow`` as Faust does: the blocked case keeps
Faust's semantics, only the unblocked case is cheaper.

Topics in ``app.direct_handlers`` skip the stream altogether (``kafka.direct_delivery``):
each fetch's messages of such a topic go to the handler as one list
(:mod:`collector.adapters.direct`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from collector.adapters.checkpoint import CheckpointCommit
from collector.adapters.direct import DIRECT_BATCH_MAX, DirectDelivery, DirectHandler
from collector.adapters.recovery_seek import rewind_changelogs


class Resumed:
    """The rest of a coroutine that already ran up to ``first`` (what it yielded).

    Awaiting it first hands ``first`` to the awaiting task, as the coroutine's own
    ``await`` would have, then relays every value and exception both ways.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine decides
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def start_delivery(
    callback: Callable[[Any], Awaitable[Any]], message: Any
) -> Awaitable[Any] | None:
    """Run ``callback(message)`` until it finishes (None) or first suspends (the rest).

    An exception raised before the first suspension propagates here, as it would from
    ``await callback(message)``.  A callback that returns some other awaitable than a
    coroutine is returned as is, to be awaited the usual way.
    """
    coro = callback(message)
    if not isinstance(coro, Coroutine):
        return coro
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    return Resumed(coro, first)




class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the app's ``fetch_max_wait_ms`` (Faust fixes 1500).

    aiokafka leaves a partition out of the next fetch while it still holds records of it,
    and sends no fetch to a broker with one in flight.  Under load all raw partitions
    often hold records, so the fetch asks for the empty ones (partials, users), the
    broker holds it for ``fetch.max.wait.ms`` and nothing else is fetched meanwhile:
    at 1500 ms the worker ran dry for 1.5 s 22 times in 40 s at 4,000 events/s, and a
    flush's partials reached the merge up to 1.5 s late; shorter waits cost CPU per
    event in a backlog, so the worker starts with this one and sets the wait per raw
    batch (:func:`set_fetch_max_wait`, ``collector.engine.schedule.FetchWait``).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 1500)
        return consumer


def set_fetch_max_wait(consumer: Any, wait_ms: int) -> bool:
    """Let the broker hold the worker's next fetches up to ``wait_ms`` when it has no data
    for them (aiokafka's fetcher reads it for every request; a fetch in flight keeps the
    wait it was sent with).  False while the aiokafka consumer has not started."""
    aio: Any = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    fetcher = getattr(aio, "_fetcher", None)
    if aio is None or fetcher is None:
        return False
    aio._fetch_max_wait_ms = fetcher._fetch_max_wait_ms = wait_ms  # a restart keeps it
    return True


class LeanHandoffConsumer(CheckpointCommit, DirectDelivery, faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with :func:`start_delivery` in its fetch loop.

    ``_drain_messages`` is Faust's (faust-streaming 0.15: ``transport/consumer.py``)
    line for line, except the ``wait_first`` per message, which now happens only when
    flow is suspended or the delivery suspended.  Every commit checkpoints the window
    state first (:class:`collector.adapters.checkpoint.CheckpointCommit`).
    """

    #: (pause, resume) partition sets waiting for the top of the fetch loop
    _flow_requests: list[tuple[set[Any], set[Any]]] | None = None
    #: the group generation this worker was frozen in (None: not fenced)
    _frozen_generation: int | None = None
    _frozen_at: float = 0.0
    _last_tick: float = 0.0

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_empty(self) -> None:
        """At shutdown, wait for the streams' unacked messages at most
        ``app.shutdown_flush_timeout``: Faust's wait commits on every round, and a
        commit with the broker gone never returns (a SIGTERM then hung before the
        producer flush, whose own bound never started).  What is left unacked is not
        committed, and the next start processes it.  A rebalance waits as Faust does."""
        app = self.app
        if not app.should_stop:
            await super().wait_empty()
            return
        timeout = float(getattr(app, "shutdown_flush_timeout", 30.0))
        began = time.monotonic()
        with contextlib.suppress(TimeoutError):  # (a commit may swallow the cancel)
            await asyncio.wait_for(super().wait_empty(), timeout)
        if time.monotonic() - began >= timeout:
            self.log.error("shutdown: streams not done or offsets not committed after "
                           "%.0fs (broker unreachable?); going on, the next start "
                           "processes what was not committed", timeout)

    @Service.task
    async def _watch_for_freeze(self) -> None:
        """Notice that this process did not run for longer than the session timeout
        (SIGSTOP, a VM pause, a stop-the-world stall): the broker has expired its member
        by then and given its partitions to another worker, but nothing here knows yet.
        Until the next rebalance it is a zombie: fetches still work and it would process
        them and write the changelogs and rows of partitions it no longer owns (measured:
        a recovered store then missed the new owner's writes and rows stayed non-final).
        """
        session = float(self.app.conf.broker_session_timeout)
        self._last_tick = time.monotonic()
        while not self.should_stop:
            await asyncio.sleep(0.25)
            self.check_frozen(session)

    def check_frozen(self, session: float) -> None:
        now = time.monotonic()
        gap, self._last_tick = now - (self._last_tick or now), now
        if gap > session and self._frozen_generation is None:
            self._frozen_generation = self.app.consumer_generation_id
            self._frozen_at = now
            self.log.warning("this worker did not run for %.1fs (session timeout %.0fs): its "
                             "partitions have moved; processing nothing until it rejoins",
                             gap, session)

    def fenced(self) -> bool:
        """Whether this worker must not process or write (frozen, not yet rejoined).

        Checks the gap itself: after a thaw the event loop may run the merge agent or
        the sink flush before the watcher's next tick, and both wrote rows computed
        before the freeze over the new owner's newer ones (measured: 11 rows back).
        """
        session = float(self.app.conf.broker_session_timeout)
        if self._frozen_generation is None:
            self.check_frozen(session)
        frozen = self._frozen_generation
        if frozen is None:
            return False
        if (self.app.consumer_generation_id != frozen
                or time.monotonic() - self._frozen_at > 3 * session):  # no rebalance came
            self._frozen_generation = None
            return False
        return True

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to its committed offset; one without a commit
        to its beginning (``consumer_auto_offset_reset=earliest``).

        Around a rebalance Faust drops records it has fetched but not handed over (flow
        stopped, partition paused, generation changed; and a direct batch fetched before
        the rebalance), and this seek (``perform_seek``) is what fetches them again.
        aiokafka seeks only to a committed offset above 0, so a partition nobody had
        committed yet (a rebalance in the group's first commit interval) kept its fetch
        position past the dropped records, and they were never processed: measured,
        ``event_stats`` rows final but short.  Replays from the beginning are skipped by
        the offset guards, as when a new member starts.  Changelog partitions go back to
        where their recovery is (:mod:`collector.adapters.recovery_seek`).
        """
        committed = await super().seek_to_committed()
        await rewind_changelogs(self)  # no commits there: see recovery_seek
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            acks = self.app.topics.acks_enabled_for
            rewind = [tp for tp, offset in committed.items() if not offset and acks(tp.topic)]
            if rewind:
                await self._thread.seek_to_beginning(*rewind)
        return committed

    def pause_later(self, pause: set[Any], resume: set[Any]) -> None:
        """Pause and resume partitions before the next fetch, never during one.

        ``getmany`` filters the records of a fetch by the live set of active partitions
        while it yields them, so ``pause_partitions`` mid-batch (from a handler or a
        timer) skipped the rest of the fetch for those partitions; their offsets then
        looked like a gap, which Faust acks: events lost, measured (1,500 of 36,800).
        """
        if self._flow_requests is None:
            self._flow_requests = []
        self._flow_requests.append((set(pause), set(resume)))
        if not getattr(self.app, "lean_handoff", True):  # Faust's own loop: no top to wait for
            self._apply_flow_requests()

    def _apply_flow_requests(self) -> None:
        requests = self._flow_requests
        while requests:
            pause, resume = requests.pop(0)
            if pause:
                self.pause_partitions(pause)
            if resume:
                self.resume_partitions(resume)

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Faust's stall check, except on partitions paused on purpose (sink
        backpressure): in a 10-minute MySQL outage it logged "Stream has not started
        processing" at ERROR for every paused partition every 7 s."""
        if tp in self._paused_partitions:
            return None
        return super().verify_event_path(now, tp)  # type: ignore[no-any-return]

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - e2e tested
        if not getattr(self.app, "lean_handoff", True):  # kafka.lean_handoff=false
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        flag_fetching = CONSUMER_FETCHING
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        delivered = waited = 0  # logged at the end: shows how often the slow path ran
        direct: dict[str, DirectHandler] = getattr(self.app, "direct_handlers", {})
        direct_max = DIRECT_BATCH_MAX
        batch: list[Any] = []
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self._flow_requests:
                    self._apply_flow_requests()
                set_flag(flag_fetching)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            delivered += 1
                            if message.topic in direct:
                                batch.append(message)
                                if len(batch) >= direct_max:
                                    await self._deliver_direct(batch)
                                    batch = []
                            elif suspended():
                                waited += 1
                                await self.wait_first(callback(message),
                                                      self.suspend_flow.wait())
                            else:
                                rest = start_delivery(callback, message)
                                if rest is not None:
                                    waited += 1
                                    await self.wait_first(rest, self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                    if batch:
                        await self._deliver_direct(batch)
                        batch = []
                    unset_flag(flag_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            # the fetcher task ends here and nothing restarts it: say so on /livez
            self.app.fetcher_failure = (  # type: ignore[attr-defined]
                f"fetcher died: {type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            unset_flag(flag_fetching)
            self.log.info("lean hand-off: %d messages delivered, %d waited (buffer full or "
                          "flow suspended)", delivered, waited)



class Transport(faust_aiokafka.Transport):
    """The aiokafka transport using :class:`LeanHandoffConsumer`."""

    Consumer = LeanHandoffConsumer


__all__ = ["LeanHandoffConsumer", "Resumed", "Transport", "start_delivery"]
