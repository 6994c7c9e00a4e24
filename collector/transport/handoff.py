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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka


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


class LeanHandoffConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with :func:`start_delivery` in its fetch loop.

    ``_drain_messages`` is Faust's (faust-streaming 0.15: ``transport/consumer.py``)
    line for line, except the ``wait_first`` per message, which now happens only when
    flow is suspended or the delivery suspended.
    """

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
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
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
                            if suspended():
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
            raise
        finally:
            unset_flag(flag_fetching)
            self.log.info("lean hand-off: %d messages delivered, %d waited (buffer full or "
                          "flow suspended)", delivered, waited)



class Transport(faust_aiokafka.Transport):
    """The aiokafka transport using :class:`LeanHandoffConsumer`."""

    Consumer = LeanHandoffConsumer


__all__ = ["LeanHandoffConsumer", "Resumed", "Transport", "start_delivery"]
