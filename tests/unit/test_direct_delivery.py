"""Direct delivery: a fetch's raw messages go to the handler as one list.

The consumer's two methods run on a stand-in consumer: what matters is the bookkeeping
Faust's rebalance and shutdown rely on.  Messages are tracked as unacked while the
handler runs and acked only after it returns; a batch fetched before a rebalance
(flow suspended, or an older generation) is neither handled nor tracked; and stopping
the fetcher mid-batch does not cut the batch short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest

from collector.adapters.transport import LeanHandoffConsumer
from collector.engine.delivery import Stopping


class Message:
    def __init__(self, topic: str, offset: int, generation: int = 1, partition: int = 0) -> None:
        self.topic, self.offset = topic, offset
        self.tp = (topic, partition)
        self.partition = partition
        self.generation_id = generation
        self.key, self.value = b"k", b"v"
        self.tracked = False


class Consumer:
    """The attributes of a Faust consumer that direct delivery uses."""

    def __init__(self, handlers: dict[str, Any]) -> None:
        self.acked: list[Message] = []
        self.sensed_in: list[int] = []
        self.sensed_out: list[int] = []
        self.suspend_flow = asyncio.Event()
        self._unacked_messages: set[Message] = set()
        active = asyncio.Event()
        active.set()
        self._frozen_generation: int | None = None
        self._frozen_at = 0.0
        self._last_tick = 0.0
        self.log = logging.getLogger("test")
        self.app = SimpleNamespace(
            conf=SimpleNamespace(broker_session_timeout=30.0),
            direct_handlers=handlers, consumer_generation_id=1,
            flow_control=SimpleNamespace(is_active=active.is_set),
            sensors=SimpleNamespace(on_message_out=lambda tp, off, m: self.sensed_out.append(off)),
            monitor=SimpleNamespace(stream_inbound_time={}),
        )

    check_frozen = LeanHandoffConsumer.check_frozen
    fenced = LeanHandoffConsumer.fenced
    _settle = LeanHandoffConsumer._settle
    _failed = LeanHandoffConsumer._failed
    _ack_direct = LeanHandoffConsumer._ack_direct
    _settling: asyncio.Future[None] | None = None
    _failed_tps: dict[Any, int] | None = None

    def _on_message_in(self, tp: Any, offset: int, message: Message) -> None:
        self.sensed_in.append(offset)

    def ack(self, message: Message) -> bool:
        self._unacked_messages.discard(message)
        self.acked.append(message)
        return True

    async def _handle_direct(self, handler: Any, messages: list[Message]) -> None:
        await LeanHandoffConsumer._handle_direct(self, handler, messages)  # type: ignore[arg-type]

    async def deliver(self, batch: list[Message]) -> None:
        await LeanHandoffConsumer._deliver_direct(self, batch)  # type: ignore[arg-type]


async def test_each_topic_gets_its_messages_as_one_list_acked_after_it_returns() -> None:
    seen: dict[str, list[int]] = {}
    consumer: Consumer

    async def handle(messages: list[Message]) -> None:
        seen[messages[0].topic] = [m.offset for m in messages]
        assert consumer._unacked_messages >= set(messages), "tracked while processed"
        assert consumer.acked == [] or messages[0].topic == "b"

    consumer = Consumer({"a": handle, "b": handle})
    batch = [Message("a", 0), Message("b", 5), Message("a", 1), Message("a", 2)]
    await consumer.deliver(batch)
    assert seen == {"a": [0, 1, 2], "b": [5]}
    assert sorted(m.offset for m in consumer.acked) == [0, 1, 2, 5]
    assert consumer._unacked_messages == set()
    assert sorted(consumer.sensed_in) == sorted(consumer.sensed_out) == [0, 1, 2, 5]


async def test_the_only_monitor_counts_each_partitions_run_in_one_call() -> None:
    """With our monitor as the app's only sensor, a batch's messages are counted per
    partition run, in and out, and a failed partition's messages never count as out."""
    from faust.types import TP
    from prometheus_client import CollectorRegistry

    from collector.adapters.sensors import monitor_for

    async def handle(messages: list[Message]) -> None:
        assert monitor.messages_active == 5, "counted in before the handler runs"
        if messages[0].topic == "b":
            raise RuntimeError("boom")

    consumer = Consumer({"a": handle, "b": handle})
    monitor = monitor_for(CollectorRegistry())
    monitor.stream_inbound_time = {}
    consumer.app.monitor, consumer.app.sensors = monitor, [monitor]
    batch = [Message("a", 0), Message("b", 5), Message("a", 1, partition=1), Message("a", 2)]
    batch.append(Message("a", 3, partition=1))
    for message in batch:
        message.tp = TP(message.topic, message.partition)  # type: ignore[assignment]
    await consumer.deliver(batch)
    assert consumer.sensed_in == [] and consumer.sensed_out == []  # not per message
    assert monitor.messages_received_total == 5
    assert dict(monitor.tp_read_offsets) == {TP("a", 0): 2, TP("b", 0): 5, TP("a", 1): 3}
    assert monitor.messages_active == 1  # b's message failed: never acked
    assert sorted(m.offset for m in consumer.acked) == [0, 1, 2, 3]


async def test_nothing_is_handled_or_tracked_while_the_flow_is_suspended() -> None:
    calls: list[Any] = []

    async def handle(messages: list[Message]) -> None:
        calls.append(messages)

    consumer = Consumer({"a": handle})
    consumer.suspend_flow.set()  # a rebalance started after the fetch
    await consumer.deliver([Message("a", 0)])
    assert calls == [] and consumer._unacked_messages == set() and consumer.acked == []


async def test_messages_of_an_older_generation_are_dropped() -> None:
    got: list[int] = []

    async def handle(messages: list[Message]) -> None:
        got.extend(m.offset for m in messages)

    consumer = Consumer({"a": handle})
    consumer.app.consumer_generation_id = 2
    await consumer.deliver([Message("a", 0, generation=1), Message("a", 1, generation=2)])
    assert got == [1]
    assert [m.offset for m in consumer.acked] == [1]
    assert consumer._unacked_messages == set()


async def test_stopping_the_fetcher_does_not_cut_a_batch_short() -> None:
    release = asyncio.Event()
    done: list[int] = []

    async def handle(messages: list[Message]) -> None:
        await release.wait()
        done.extend(m.offset for m in messages)

    consumer = Consumer({"a": handle})
    fetcher = asyncio.ensure_future(consumer.deliver([Message("a", 0), Message("a", 1)]))
    await asyncio.sleep(0.01)
    fetcher.cancel()  # Faust stops the fetcher at shutdown, then waits for acks
    with pytest.raises(asyncio.CancelledError):
        await fetcher
    assert len(consumer._unacked_messages) == 2  # wait_empty would wait for these
    release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == [0, 1]
    assert consumer._unacked_messages == set()


async def test_a_handler_that_raises_acks_nothing_and_fails_liveness() -> None:
    async def handle(messages: list[Message]) -> None:
        raise RuntimeError("bug past process_safely")

    consumer = Consumer({"a": handle, "b": lambda ms: asyncio.sleep(0)})
    await consumer.deliver([Message("a", 0), Message("a", 1), Message("b", 7)])
    assert [m.offset for m in consumer.acked] == [7]  # only the other topic's batch
    assert consumer._unacked_messages == set()  # a rebalance does not wait for it forever
    assert "RuntimeError: bug past process_safely" in consumer.app.fetcher_failure


async def test_a_handler_stopped_mid_retry_acks_nothing_and_lets_the_shutdown_finish() -> None:
    """SIGTERM while the handler's produce was being retried: its batch is left
    unacked (the next start redoes it), leaves the unacked set so ``wait_empty`` does
    not wait for ever, and is not a failure that liveness reports."""
    async def handle(messages: list[Message]) -> None:
        raise Stopping("producing to enriched failed while stopping")

    consumer = Consumer({"a": handle})
    await consumer.deliver([Message("a", 0), Message("a", 1)])
    assert consumer.acked == [] and consumer._unacked_messages == set()
    assert not hasattr(consumer.app, "fetcher_failure")


async def test_a_worker_that_was_frozen_past_its_session_processes_nothing() -> None:
    """A zombie: its partitions moved while it did not run; until it rejoins (a new
    generation) every fetched batch is dropped unacked instead of processed."""
    calls: list[int] = []

    async def handle(messages: list[Message]) -> None:
        calls.extend(m.offset for m in messages)

    consumer = Consumer({"a": handle})
    consumer._last_tick = time.monotonic() - 31  # the last tick was before a 31 s freeze
    await consumer.deliver([Message("a", 0)])
    assert calls == [] and consumer.acked == [] and consumer._unacked_messages == set()
    assert consumer.fenced()
    await consumer.deliver([Message("a", 1)])  # still the same generation: still fenced
    assert calls == []
    consumer.app.consumer_generation_id = 2  # rejoined
    await consumer.deliver([Message("a", 2, generation=2)])
    assert calls == [2] and not consumer.fenced()


def test_the_first_caller_after_a_thaw_is_told_it_is_fenced() -> None:
    """After a thaw the merge agent or a sink flush may run before the freeze watcher's
    next tick; they ask ``fenced()`` and must already get yes, or they write rows
    computed before the freeze over the new owner's."""
    consumer = Consumer({})
    consumer._last_tick = time.monotonic() - 31  # the watcher last ran before the freeze
    assert consumer.fenced()
    consumer.app.consumer_generation_id = 2  # rejoined
    assert not consumer.fenced()


async def test_a_delivered_batch_tells_faust_its_partitions_are_processing() -> None:
    """Without it Faust's stall check logs "Stream has not started processing" at ERROR
    for every direct partition that lags for 5 minutes (seen in a long MySQL outage)."""
    async def handle(messages: list[Message]) -> None:
        return None

    consumer = Consumer({"a": handle})
    before = time.monotonic()
    await consumer.deliver([Message("a", 0), Message("a", 1)])
    inbound = consumer.app.monitor.stream_inbound_time
    assert set(inbound) == {("a", 0)} and inbound[("a", 0)] >= before


def test_faust_stall_check_skips_partitions_paused_for_backpressure() -> None:
    checked: list[Any] = []
    consumer = object.__new__(LeanHandoffConsumer)  # only the two attributes it reads
    consumer._thread = SimpleNamespace(  # type: ignore[assignment]
        verify_event_path=lambda now, tp: checked.append(tp))
    consumer._paused_partitions = {("raw", 0)}
    consumer.verify_event_path(1.0, ("raw", 0))
    consumer.verify_event_path(1.0, ("raw", 1))
    assert checked == [("raw", 1)]


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_next_batch_is_processed_while_the_last_ones_records_are_delivered() -> None:
    """``kafka.overlap_deliveries``: the handler returns its batch's deliveries; the
    batch is acked only once they are done, the fetch loop goes on meanwhile, and acks
    stay in order (Faust commits the first run of consecutive acked offsets, so an ack
    ahead of an unacked batch would commit past it)."""
    loop = asyncio.get_running_loop()
    deliveries = {0: loop.create_future(), 2: loop.create_future()}
    processed: list[int] = []

    async def handle(messages: list[Message]) -> list[Any]:
        processed.append(messages[0].offset)
        return [deliveries[messages[0].offset]]

    consumer = Consumer({"a": handle})
    first = [Message("a", 0), Message("a", 1)]
    await consumer.deliver(first)  # returns before its records are delivered
    assert processed == [0] and consumer.acked == []
    assert consumer._unacked_messages == set(first), "a rebalance waits for it"
    second = asyncio.ensure_future(consumer.deliver([Message("a", 2), Message("a", 3)]))
    await _turns()
    assert processed == [0, 2], "processed during the first batch's round trip"
    assert consumer.acked == [] and not second.done(), "at most one batch settles at a time"
    deliveries[2].set_result(None)  # the second batch's records land first
    await _turns()
    assert consumer.acked == [], "not acked ahead of the batch before it"
    deliveries[0].set_result(None)
    await _turns()
    assert second.done() and [m.offset for m in consumer.acked][:2] == [0, 1]
    if consumer._settling is not None:
        await consumer._settling
    assert [m.offset for m in consumer.acked] == [0, 1, 2, 3]
    assert consumer._unacked_messages == set()


async def test_a_batch_without_deliveries_waits_for_the_one_settling_before_it() -> None:
    loop = asyncio.get_running_loop()
    delivered = loop.create_future()

    async def handle(messages: list[Message]) -> list[Any]:
        return [delivered] if messages[0].offset == 0 else []

    consumer = Consumer({"a": handle})
    await consumer.deliver([Message("a", 0)])
    later = asyncio.ensure_future(consumer.deliver([Message("a", 1)]))
    await _turns()
    assert consumer.acked == [] and not later.done()
    delivered.set_result(None)
    await later
    assert [m.offset for m in consumer.acked] == [0, 1]


def first_batch_settles_on(pending: asyncio.Future[Any]) -> Any:
    """A direct handler: the batch at offset 0 settles on ``pending``, any other at once."""
    async def handle(messages: list[Message]) -> list[Any]:
        if messages[0].offset == 0:
            return [pending]
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    return handle


async def test_a_failed_delivery_leaves_its_partition_unacked_until_the_next_generation() -> None:
    """A batch whose records could not be delivered (a bug, or a SIGTERM mid-retry) is
    not acked, and neither is anything after it on its partition: an ack there would
    commit past the lost batch.  Other partitions carry on; a rebalance (a new
    generation, which refetches from the committed offset) clears it."""
    loop = asyncio.get_running_loop()
    failing = loop.create_future()

    handle = first_batch_settles_on(failing)

    consumer = Consumer({"a": handle})
    await consumer.deliver([Message("a", 0), Message("a", 1)])
    failing.set_exception(RuntimeError("broker said no"))
    await consumer.deliver([Message("a", 2), Message("a", 5, partition=1)])
    await consumer._settling
    assert [(m.partition, m.offset) for m in consumer.acked] == [(1, 5)]
    assert consumer._unacked_messages == set(), "wait_empty must not wait for them"
    assert "RuntimeError: broker said no" in consumer.app.fetcher_failure
    consumer.app.consumer_generation_id = 2
    await consumer.deliver([Message("a", 2, generation=2)])
    await consumer._settling
    assert [(m.partition, m.offset) for m in consumer.acked] == [(1, 5), (0, 2)]


async def test_stopping_while_delivering_acks_nothing_and_is_no_failure() -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    stopped.set_exception(Stopping("producing to enriched failed while stopping"))

    async def handle(messages: list[Message]) -> list[Any]:
        return [stopped]

    consumer = Consumer({"a": handle})
    await consumer.deliver([Message("a", 0)])
    await consumer._settling
    assert consumer.acked == [] and consumer._unacked_messages == set()
    assert not hasattr(consumer.app, "fetcher_failure")


async def test_a_cancelled_delivery_leaves_its_batch_unacked_and_the_next_one_going() -> None:
    """Deliveries cancelled (the loop closing) fail that batch alone: the next batch on
    another partition still settles, and nothing raises into the fetch loop."""
    loop = asyncio.get_running_loop()
    cancelled = loop.create_future()

    handle = first_batch_settles_on(cancelled)

    consumer = Consumer({"a": handle})
    await consumer.deliver([Message("a", 0)])
    cancelled.cancel()
    await consumer.deliver([Message("a", 9, partition=1)])  # must not raise
    await consumer._settling
    assert [(m.partition, m.offset) for m in consumer.acked] == [(1, 9)]
    assert consumer._unacked_messages == set()
