"""The foundation's smoke test: a real worker process turns a raw event into output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e


async def fetch_wait_ms(port: int) -> float | None:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("collector_kafka_fetch_max_wait_ms "):
            return float(line.rpartition(" ")[2])
    return None


async def test_worker_processes_a_raw_event(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = worker_factory(env).start()
    worker.wait_ready()

    import time

    now = int(time.time() * 1000)
    good = {"event_id": "smoke-1", "user_id": "u00001", "type": "page_view", "ts": now}
    await produce(
        settings,
        settings.kafka.raw_topic("web"),
        [(b"u00001", orjson.dumps(good)), (None, b"{not json")],
    )
    records = await read_until(
        settings,
        [settings.kafka.enriched_topic, settings.kafka.deadletter_topic],
        lambda recs: len(recs) >= 2,
    )
    by_topic = {r.topic: r for r in records}
    enriched = orjson.loads(by_topic[settings.kafka.enriched_topic].value)
    assert enriched["event_id"] == "smoke-1"
    assert enriched["source"] == "web"
    assert enriched["enrichment"] in {"hit", "miss", "negative", "degraded"}
    assert by_topic[settings.kafka.enriched_topic].key == b"u00001"
    dead = by_topic[settings.kafka.deadletter_topic]
    assert orjson.loads(dead.value)["reason"] == "malformed_json"
    assert dict(dead.headers)["x-collector-reason"] == b"malformed_json"
    assert len(records) == 2, "exactly one output per consumed event"

    # fresh records: the worker keeps up, so its fetches wait the short time, not 1500 ms
    # (engine/schedule.py FetchWait; the policy's other cases are unit tests)
    assert settings.kafka.fetch_max_wait_caught_up_ms == 200
    waits = []
    for _ in range(50):
        waits.append(await fetch_wait_ms(worker.port))
        if waits[-1] == 200:
            break
        await asyncio.sleep(0.2)
    assert waits[0] is not None and waits[-1] == 200, waits
