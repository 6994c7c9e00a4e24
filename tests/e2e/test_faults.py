"""Fault injection on a real broker: a topic that refuses the worker's writes for a while.

The broker is told to refuse every record batch for one topic (``max.message.bytes``
set to 64 on that topic: a MESSAGE_TOO_LARGE for every produce request, a non-retriable
error the producer hands back), then to accept them again.  Whatever the topic, the end
state must be exact: MySQL equal to the oracle, every bad message dead-lettered, no valid
event dead-lettered, consumed = counted + duplicates + dead-lettered, and nothing
committed past a message whose records were not delivered.  Printed lines start with
``[faults]``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.sinks_io import mysql_rows
from tests.e2e.test_windows_robust import (
    SMALL,
    SMALL_ENV,
    _quiet,
    expect,
    keys_for,
    metric,
    metrics,
    over_counts,
    prepare_stream,
    readyz,
    start,
    stream,
    until,
)
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

REFUSING = "64"  # bytes: smaller than any record batch
DEFAULT_MAX = "1048588"  # Kafka's default max.message.bytes


def report(text: str) -> None:
    print(f"\n[faults] {text}", flush=True)


async def set_max_message_bytes(settings: Settings, topic: str, value: str) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": value})])
    finally:
        await admin.close()


async def committed(settings: Settings) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.app.id)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


async def scenario(tmp_path: Path, worker_factory: Callable[..., Worker], prefix: str
                   ) -> tuple[str, Settings, list[str], dict[str, tuple[str, str]], Worker, int]:
    """Tag, settings, seeded users and their segments, a ready worker, and the lowest
    window start of the run."""
    tag = prefix + uuid.uuid4().hex[:8]
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db",
                       COLLECTOR_KAFKA__COMMIT_INTERVAL="1",
                       COLLECTOR_WEB__READY_PRODUCE_FAILING_SECONDS="2")
    settings = settings_for(env)
    users, segments = await prepare_stream(settings, tag, 6)
    worker = await start(worker_factory(env))
    return tag, settings, users, segments, worker, int(time.time() * 1000) - 60_000


async def all_final(settings: Settings, worker: Worker, expected: dict[Any, Any],
                    tag: str, lo: int, hi: int) -> Any:
    async def check() -> tuple[bool, Any]:
        rows = await mysql_rows(settings, lo, hi, keys_for(tag))
        done = expected.keys() <= rows.keys() and all(f for _, f in rows.values())
        return done and (await _quiet(worker))[0], rows if done else sorted(
            expected.keys() - rows.keys())[:5]

    return await until(check, 90, "every window final")


async def test_dead_letter_topic_refusing_writes_then_accepting(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag, settings, users, segments, worker, lo = await scenario(tmp_path, worker_factory, "f")
    dead_topic = settings.kafka.deadletter_topic
    rng = random.Random(5)
    bad: list[tuple[str, bytes]] = []  # (topic, key) of each malformed message
    outage: dict[str, Any] = {}

    async def after_batch(i: int) -> None:
        if i == 4:
            await set_max_message_bytes(settings, dead_topic, REFUSING)
        if 5 <= i <= 8:  # malformed messages while the dead-letter topic refuses them
            source = settings.kafka.sources[i % 2]
            key = rng.choice(users).encode()
            topic = settings.kafka.raw_topic(source)
            await produce(settings, topic, [(key, b'{"event_id": "broken')])
            bad.append((topic, key))
        if i == 14:
            body = await readyz(worker)
            outage["reasons"] = body["reasons"]
            outage["failing"] = metric(await metrics(worker), "collector_produce_failing",
                                       topic=dead_topic)
            outage["committed"] = await committed(settings)
            await set_max_message_bytes(settings, dead_topic, DEFAULT_MAX)

    events = await stream(settings, tag, users, batches=24, pace_s=0.4, rng=rng,
                          after_batch=after_batch)
    expected = expect(events, segments, **SMALL)
    rows = await all_final(settings, worker, expected, tag, lo,
                           int(time.time() * 1000) + 60_000)
    records = await read_until(settings, [dead_topic],
                               lambda recs: len(recs) >= len(bad), limit_s=30)
    dead = [orjson.loads(r.value) for r in records]
    text = await metrics(worker)
    consumed = metric(text, "collector_events_consumed_total")
    valid = metric(text, "collector_events_valid_total")
    dead_lettered = metric(text, "collector_events_dead_lettered_total")
    duplicates = metric(text, "collector_events_duplicate_total") or 0.0
    ready = await readyz(worker)
    over, wrong = over_counts(rows, expected)
    report(f"dead-letter topic refused for ~4 s: readyz reasons {outage['reasons']}; "
           f"produce_failing {outage['failing']}; {len(events)} events, {len(bad)} bad; "
           f"consumed {consumed}, valid {valid}, dead-lettered {dead_lettered}")
    assert any(r.startswith(f"producing to {dead_topic} failing") for r in outage["reasons"])
    assert outage["failing"] == 1.0
    assert not wrong, wrong[:10]
    assert sum(over.values()) == 0, over
    assert sorted((d["topic"], d["reason"]) for d in dead) == sorted(
        (t, "malformed_json") for t, _ in bad)
    # consumed = counted + duplicates + dead-lettered, each once
    assert consumed == len(events) + len(bad) == valid + dead_lettered
    assert valid == len(events) and dead_lettered == len(bad) and duplicates == 0
    assert ready["ready"] and ready["producing"] == {}
    # while refused, no raw partition was committed past its first undelivered message
    first_bad = {}
    for d in dead:
        tp = (d["topic"], d["partition"])
        first_bad[tp] = min(first_bad.get(tp, d["offset"]), d["offset"])
    for tp, offset in first_bad.items():
        assert outage["committed"].get(tp, 0) <= offset, (tp, outage["committed"])


async def test_enriched_topic_refusing_writes_dead_letters_nothing(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag, settings, users, segments, worker, lo = await scenario(tmp_path, worker_factory, "g")
    enriched = settings.kafka.enriched_topic
    outage: dict[str, Any] = {}

    async def after_batch(i: int) -> None:
        if i == 3:
            await set_max_message_bytes(settings, enriched, REFUSING)
        if i == 10:
            outage["reasons"] = (await readyz(worker))["reasons"]
            await set_max_message_bytes(settings, enriched, DEFAULT_MAX)

    events = await stream(settings, tag, users, batches=20, pace_s=0.4,
                          rng=random.Random(9), after_batch=after_batch)
    expected = expect(events, segments, **SMALL)
    rows = await all_final(settings, worker, expected, tag, lo,
                           int(time.time() * 1000) + 60_000)
    want = {e["event_id"] for e in events}
    forwarded = await read_until(
        settings, [enriched],
        lambda recs: want <= {orjson.loads(r.value)["event_id"] for r in recs}, limit_s=30)
    text = await metrics(worker)
    over, wrong = over_counts(rows, expected)
    failures = metric(text, "collector_produce_failures_total", topic=enriched)
    report(f"enriched topic refused for ~3 s: {failures} refused deliveries produced again; "
           f"{len(events)} events, {len(forwarded)} forwarded records; reasons "
           f"{outage['reasons']}")
    assert any(r.startswith(f"producing to {enriched} failing") for r in outage["reasons"])
    assert not wrong, wrong[:10]
    assert sum(over.values()) == 0, over
    assert want <= {orjson.loads(r.value)["event_id"] for r in forwarded}
    assert (metric(text, "collector_events_dead_lettered_total") or 0.0) == 0.0
    assert metric(text, "collector_events_consumed_total") == len(events)
    assert failures is not None and failures >= 1
