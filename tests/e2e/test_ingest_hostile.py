"""Hostile ingest bodies against a real worker: refused quickly, the worker stays live.

A 4 MB body of 1.3 million ``{}`` used to hold the event loop 8.5 s (longer than the
consumer session), answer 240 MB and peak at 1.8 GB RSS.  Here it and a burst of
concurrent large bodies are sent while ``/livez`` is probed every 50 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

TOKEN = "hostile-ingest-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: the worker's resident peak may not pass this (the k8s limit is 1536Mi)
RSS_BOUND_MB = 700
HUGE = b"[" + b",".join([b"{}"] * 1_300_000) + b"]"


def events(n: int, tag: str) -> bytes:
    now = int(time.time() * 1000)
    return orjson.dumps([{"event_id": f"{tag}-{i}", "user_id": f"h{i % 97}", "type": "click",
                          "ts": now} for i in range(n)])


@pytest.fixture(scope="module")
def worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("hostile")
    env = isolated_env(tmp, COLLECTOR_WEB__INGEST_TOKEN=TOKEN)
    asyncio.run(ensure_topics(settings_for(env)))
    w = Worker(env, tmp / "worker.log").start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


class Prober:
    """Calls /livez every 50 ms and keeps the slowest answer."""

    def __init__(self, w: Worker) -> None:
        self.url = f"http://127.0.0.1:{w.port}/livez"
        self.slowest = 0.0
        self.failures: list[str] = []
        self.calls = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with http.get(self.url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                        if r.status != 200:
                            self.failures.append(f"status {r.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(repr(exc))
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.calls += 1
                await asyncio.sleep(0.05)


async def post(w: Worker, body: bytes) -> tuple[int, Any, float, int]:
    url = f"http://127.0.0.1:{w.port}/api/v1/events/web"
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(
        url, data=body, headers=AUTH, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw), time.monotonic() - started, len(raw)


async def test_huge_bodies_are_refused_while_the_worker_stays_live(worker: Worker) -> None:
    prober = Prober(worker)
    stop = asyncio.Event()
    probing = asyncio.create_task(prober.run(stop))
    try:
        status, answer, took, size = await post(worker, HUGE)
        assert status == 413, answer
        assert "max_request_events" in answer["error"] and size < 1000
        # a burst: eight huge bodies, four of 5,000 good events, four of 2,000 {} (a
        # 202 echoing at most 100 rejects), all at once
        bodies = [HUGE] * 8 + [events(5000, f"b{i}") for i in range(4)] + [
            b"[" + b",".join([b"{}"] * 2000) + b"]"] * 4
        answers = await asyncio.gather(*(post(worker, b) for b in bodies))
    finally:
        stop.set()
        await probing
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {202, 413, 503}, statuses
    assert statuses[:8].count(413) + statuses[:8].count(503) == 8
    for st, body, _, _size in answers[8:12]:
        assert st == 503 or (st, body["accepted"]) == (202, 5000), body
    for st, body, _, size in answers[12:]:
        if st == 202:
            assert body["rejected_total"] == 2000 and len(body["rejected"]) == 100
            assert body["rejected_by_reason"] == {"schema_violation": 2000}
            assert size < 50_000
    assert statuses.count(202) >= 2, statuses  # the slots serve, they do not just refuse
    peak = worker.peak_rss_mb()
    print(f"huge body: 413 in {took:.3f}s; burst: {statuses}; slowest /livez "
          f"{prober.slowest:.3f}s over {prober.calls} calls; peak RSS {peak:.0f} MB")
    assert not prober.failures, prober.failures[:5]
    assert prober.slowest < 1.0
    assert peak < RSS_BOUND_MB
