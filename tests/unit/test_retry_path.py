"""The raw batch's failure paths: refused deliveries, bugs, poison messages.

Each test breaks one thing the way it breaks in production (the broker refuses a topic
for a while, a record trips a bug every time, a bug strikes after the events were
counted) and checks the end state: every metric counted once, every window counted
once, and a dead letter exactly for what was not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from collector.adapters.output import Batches, KafkaOutput
from collector.config import load_settings
from collector.engine.aggregator import Aggregator, Specs, user_key
from collector.engine.delivery import Stopping
from collector.engine.processor import RawProcessor, RawRecord, home_partition
from collector.engine.state import DictState
from collector.enrichment import Outcome
from collector.enrichment.users import UserProfile
from collector.observability import Metrics

SETTINGS = load_settings()
TOPIC = SETTINGS.kafka.raw_topic("web")
DEAD = SETTINGS.kafka.deadletter_topic


class Profiles:
    """The enricher's interface: a fixed profile per user (Redis and MySQL are not the
    subject here); ``explode`` user ids raise, like a bug in enrichment would."""

    def __init__(self) -> None:
        self.explode: set[str] = set()

    async def enrich_many(self, ids: Collection[str]) -> dict[str, Any]:
        if self.explode & set(ids):
            raise ZeroDivisionError("boom in enrichment")
        return {u: (UserProfile(u, "s", "NL", "free"), Outcome.HIT) for u in ids}


class Broker(KafkaOutput):
    """KafkaOutput minus the producer; refuses every delivery to the topics in
    ``refuse`` until they are removed."""

    def __init__(self) -> None:
        super().__init__(None, max_backoff=0.05)  # type: ignore[arg-type]
        self.refuse: set[str] = set()
        self.delivered: list[tuple[str, bytes | None, bytes | None]] = []

    async def send_once(self, topic: str, key: bytes | None, value: bytes | None,
                        headers: Any, partition: int | None = None) -> Awaitable[Any]:
        fut = asyncio.get_running_loop().create_future()
        if topic in self.refuse:
            fut.set_exception(KafkaError(f"{topic} refuses writes"))
        else:
            self.delivered.append((topic, key, value))
            fut.set_result(type("Meta", (), {"partition": partition or 0, "offset": 0})())
        return fut

    async def batches(self, topic: str) -> Batches:
        return Batches(topic, None, None, self)


def event(eid: str, user: str, ts: int | None = None) -> dict[str, Any]:
    return {"event_id": eid, "user_id": user, "type": "click",
            "ts": ts if ts is not None else int(time.time() * 1000)}


def users_on(partition: int, n: int) -> list[str]:
    found = []
    i = 0
    while len(found) < n:
        uid = f"user-{i}"
        if home_partition(uid, SETTINGS.kafka.partitions) == partition:
            found.append(uid)
        i += 1
    return found


def records(values: list[Any], partition: int = 0) -> list[RawRecord]:
    return [RawRecord(TOPIC, partition, off, None,
                      v if isinstance(v, bytes) else orjson.dumps(v))
            for off, v in enumerate(values)]


def build() -> tuple[RawProcessor, Aggregator, Profiles, Metrics]:
    metrics = Metrics(CollectorRegistry())
    aggregator = Aggregator(DictState(), Specs.from_settings(SETTINGS))
    profiles = Profiles()
    processor = RawProcessor(SETTINGS, profiles, metrics,  # type: ignore[arg-type]
                             aggregator=aggregator)
    return processor, aggregator, profiles, metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(f"collector_{name}_total", labels)
    return 0.0 if got is None else got


def counted(aggregator: Aggregator, user: str, ts: int) -> int:
    ws = ts - ts % aggregator.specs.user.step_ms
    entry = aggregator.state.get(0, user_key(user, ws))
    return 0 if entry is None else int(entry["agg"]["count"])


async def test_a_refused_dead_letter_topic_delays_the_batch_and_counts_once() -> None:
    processor, aggregator, _, metrics = build()
    broker = Broker()
    broker.refuse.add(DEAD)
    [u1] = users_on(0, 1)
    now = int(time.time() * 1000)
    batch = records([event("e1", u1, now), b"{not json", event("e2", u1, now)])
    task = asyncio.ensure_future(processor.process_safely(batch, broker))
    await asyncio.sleep(0.3)
    assert not task.done()  # waits: the batch is not acked, no offset passes it
    assert broker.health.failing().keys() == {DEAD}
    broker.refuse.clear()  # writable again: it recovers by itself
    result = await asyncio.wait_for(task, 10)
    assert result.consumed == 3 and result.dead_letters == 1 and len(result.enriched) == 2
    assert [r[0] for r in broker.delivered].count(DEAD) == 1
    assert value(metrics, "events_consumed", source="web") == 3
    assert value(metrics, "events_valid", source="web") == 2
    assert value(metrics, "events_dead_lettered", source="web", reason="malformed_json") == 1
    assert counted(aggregator, u1, now) == 2
    assert broker.health.failing() == {}


async def test_refused_forwarding_never_dead_letters_counted_events() -> None:
    processor, aggregator, _, metrics = build()
    broker = Broker()
    broker.refuse.add(SETTINGS.kafka.enriched_topic)
    [u1] = users_on(0, 1)
    now = int(time.time() * 1000)
    task = asyncio.ensure_future(processor.process_safely(
        records([event("e1", u1, now), event("e2", u1, now)]), broker))
    await asyncio.sleep(0.3)
    broker.refuse.clear()
    result = await asyncio.wait_for(task, 10)
    assert result.dead_letters == 0
    assert [r[0] for r in broker.delivered].count(DEAD) == 0
    assert [r[0] for r in broker.delivered].count(SETTINGS.kafka.enriched_topic) == 2
    assert value(metrics, "events_valid", source="web") == 2
    assert counted(aggregator, u1, now) == 2


async def test_overlapped_a_refused_forwarding_is_left_to_the_consumer_to_await() -> None:
    """With ``settle`` (``kafka.overlap_deliveries``) the batch returns once everything
    is decided and sent: its deliveries, still being retried, are the consumer's to
    await before the ack.  Nothing is retried record by record or counted twice."""
    processor, aggregator, _, metrics = build()
    broker = Broker()
    broker.refuse.add(SETTINGS.kafka.enriched_topic)
    [u1] = users_on(0, 1)
    now = int(time.time() * 1000)
    settle: list[Awaitable[Any]] = []
    result = await asyncio.wait_for(processor.process_safely(
        records([event("e1", u1, now), event("e2", u1, now)]), broker, settle), 5)
    assert len(result.enriched) == 2 and settle
    delivered = asyncio.ensure_future(asyncio.gather(*settle))
    await asyncio.sleep(0.2)
    assert not delivered.done(), "the broker still refuses: not delivered, not acked"
    broker.refuse.clear()
    await asyncio.wait_for(delivered, 10)
    assert [r[0] for r in broker.delivered].count(SETTINGS.kafka.enriched_topic) == 2
    assert value(metrics, "events_valid", source="web") == 2
    assert value(metrics, "events_consumed", source="web") == 2
    assert counted(aggregator, u1, now) == 2


async def test_a_batch_stopped_mid_retry_is_neither_retried_alone_nor_dead_lettered() -> None:
    """SIGTERM while forwarding is refused: the batch ends with ``Stopping`` (unacked,
    redone by the next start), not retried record by record and dead-lettered."""
    processor, _, _, metrics = build()
    broker = Broker()
    broker._app = SimpleNamespace(should_stop=False)  # type: ignore[assignment]
    broker.refuse.add(SETTINGS.kafka.enriched_topic)
    [u1] = users_on(0, 1)
    task = asyncio.ensure_future(processor.process_safely(records([event("e1", u1)]), broker))
    await asyncio.sleep(0.2)
    assert not task.done()
    broker._app.should_stop = True  # the worker got SIGTERM
    with pytest.raises(Stopping):
        await asyncio.wait_for(task, 5)
    assert [r[0] for r in broker.delivered].count(DEAD) == 0
    assert value(metrics, "events_dead_lettered", source="web", reason="internal_error") == 0


async def test_a_poison_message_is_dead_lettered_as_internal_error_once() -> None:
    processor, aggregator, profiles, metrics = build()
    broker = Broker()
    good, bad = users_on(0, 2)
    profiles.explode.add(bad)
    now = int(time.time() * 1000)
    batch = records([event("g1", good, now), event("b1", bad, now), event("g2", good, now)])
    result = await processor.process_safely(batch, broker)
    assert result.consumed == 3 and result.dead_letters == 1
    dead = [orjson.loads(v) for t, _, v in broker.delivered if t == DEAD]
    assert len(dead) == 1 and dead[0]["reason"] == "internal_error"
    assert dead[0]["offset"] == 1
    assert dead[0]["errors"][0]["msg"].startswith("internal error: ZeroDivisionError at ")
    assert value(metrics, "events_consumed", source="web") == 3  # not 3 + 2 retried
    assert value(metrics, "events_valid", source="web") == 2
    assert value(metrics, "events_dead_lettered", source="web", reason="internal_error") == 1
    assert counted(aggregator, good, now) == 2 and counted(aggregator, bad, now) == 0
    # the same batch again (a restart before the commit): nothing counted twice
    again = await processor.process_safely(batch, broker)
    assert counted(aggregator, good, now) == 2 and again.dead_letters == 1


async def test_a_bug_after_counting_is_not_dead_lettered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    processor, aggregator, _, metrics = build()
    broker = Broker()
    [u1] = users_on(0, 1)
    now = int(time.time() * 1000)

    def broken_stats(agg: Any, event: Any, ts: int) -> None:
        raise KeyError("event_stats bug")

    # user_activity is folded first, then event_stats raises: the event is counted
    # (the folds are chosen when the aggregator is built: swap event_stats' own)
    plans = tuple((*p[:-1], broken_stats) if p[0] == "event_stats" else p
                  for p in aggregator._partials)
    monkeypatch.setattr(aggregator, "_partials", plans)
    result = await processor.process_safely(records([event("e1", u1, now)]), broker)
    assert counted(aggregator, u1, now) == 1
    assert result.dead_letters == 0
    assert [t for t, _, _ in broker.delivered if t == DEAD] == []
    assert value(metrics, "events_dead_lettered", source="web", reason="internal_error") == 0
