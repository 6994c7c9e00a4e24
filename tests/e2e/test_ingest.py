"""HTTP ingest against a real worker: auth, limits, partial rejection, 202 = in Kafka, 503.

One worker (token ``secret``, small body limit) serves the first tests; the broker-down
test runs its own worker against a throwaway Kafka broker that it then kills.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import read_until, settings_for, topic_partitions
from tests.e2e.workers import Worker, isolated_env
from tests.private_kafka import private_broker

pytestmark = pytest.mark.e2e

TOKEN = "secret"
MAX_BODY = 4096
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ev(eid: str, uid: str = "iu1", **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "user_id": uid, "type": "click", "ts": int(time.time() * 1000),
            **extra}


def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def served(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker with an ingest token and a small body limit, for the module."""
    tmp = tmp_path_factory.mktemp("ingest")
    env = isolated_env(tmp, COLLECTOR_WEB__INGEST_TOKEN=TOKEN,
                       COLLECTOR_WEB__MAX_BODY_BYTES=str(MAX_BODY))
    asyncio.run(ensure_topics(settings_for(env)))
    worker = Worker(env, tmp / "worker.log").start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


async def post(
    worker: Worker, source: str, body: bytes, headers: dict[str, str] | None = None,
    limit_s: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    url = f"http://127.0.0.1:{worker.port}/api/v1/events/{source}"
    async with aiohttp.ClientSession() as http, http.post(
        url, data=body, headers=headers or {}, timeout=aiohttp.ClientTimeout(total=limit_s)
    ) as resp:
        text = await resp.text()
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            payload = text
        return resp.status, payload, dict(resp.headers)


async def ingest_counts(worker: Worker) -> dict[str, int]:
    """collector_http_ingest_events_total by result, from the worker's /metrics."""
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{worker.port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        text = await resp.text()
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "collector_http_ingest_events_total":
                counts[s.labels["result"]] = counts.get(s.labels["result"], 0) + int(s.value)
    return counts


# ---------------------------------------------------------------------------- (a) to (c)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}],
    ids=["none", "wrong", "basic-scheme", "no-scheme", "longer"],
)
async def test_missing_or_wrong_token_is_401(served: Worker, headers: dict[str, str]) -> None:
    status, body, resp_headers = await post(served, "web", orjson.dumps(ev("a-" + tag())),
                                            headers)
    assert status == 401, body
    assert resp_headers.get("WWW-Authenticate") == "Bearer"


async def test_right_token_is_202(served: Worker) -> None:
    for auth in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        status, body, _ = await post(served, "web", orjson.dumps(ev("a-" + tag())),
                                     {"Authorization": auth})
        assert (status, body) == (202, {"accepted": 1, "rejected": [],
                                        "rejected_total": 0, "rejected_by_reason": {}})


async def test_unknown_source_is_404(served: Worker) -> None:
    status, body, _ = await post(served, "nosuch", orjson.dumps(ev("s-" + tag())), AUTH)
    assert status == 404, body
    assert body["sources"] == ["mobile", "web", "openapi"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_limit_is_413(served: Worker, chunked: bool) -> None:
    big = orjson.dumps([ev(f"big-{i}") for i in range(60)])
    assert len(big) > MAX_BODY
    data: Any = big
    if chunked:  # no Content-Length: the limit must hold while reading

        async def chunks() -> Any:
            for start in range(0, len(big), 512):
                yield big[start:start + 512]

        data = chunks()
    url = f"http://127.0.0.1:{served.port}/api/v1/events/web"
    async with aiohttp.ClientSession() as http, http.post(
        url, data=data, headers=AUTH, timeout=aiohttp.ClientTimeout(total=10)
    ) as resp:
        assert resp.status == 413, await resp.text()
    # exactly at the limit is fine (a JSON array padded with whitespace)
    body = orjson.dumps([ev("edge-" + tag())])
    status, answer, _ = await post(served, "web", body + b" " * (MAX_BODY - len(body)), AUTH)
    assert (status, answer["accepted"]) == (202, 1)


async def test_bad_bodies_are_400(served: Worker) -> None:
    for body in (b"", b"{not json", b"42", b'{"a": 1}\n{broken'):
        status, answer, _ = await post(served, "web", body, AUTH)
        assert status == 400, (body, answer)


# ---------------------------------------------------------------------------- (d)


async def test_partial_rejection_array_and_ndjson(served: Worker) -> None:
    t = tag()
    items: list[Any] = [
        ev(f"{t}-0"), ev(f"{t}-1", value=True), ev(f"{t}-2", "iu2"), 42,
        ev(f"{t}-4", ts="2026-11-24T10:00:00"), ev(f"{t}-5", source="mobile"),
        ev(f"{t}-6", "iu3", value=1.5), {"event_id": f"{t}-7"},
    ]
    bad = {1: "value", 3: "", 4: "ts", 5: "source", 7: "user_id"}
    for body in (orjson.dumps(items), b"\n".join(orjson.dumps(i) for i in items) + b"\n"):
        status, answer, _ = await post(served, "web", body, AUTH)
        assert status == 202, answer
        assert answer["accepted"] == len(items) - len(bad)
        assert [r["index"] for r in answer["rejected"]] == sorted(bad)
        for rejected in answer["rejected"]:
            assert bad[rejected["index"]] in [e["loc"] for e in rejected["errors"]], rejected
            assert all(set(e) == {"loc", "msg"} for e in rejected["errors"])


# ---------------------------------------------------------------------------- (e)


async def test_202_means_in_kafka_then_enriched(served: Worker) -> None:
    settings = settings_for(served.env)
    topic = settings.kafka.raw_topic("openapi")
    t = tag()
    users = {f"{t}a": 3, f"{t}b": 2, f"{t}c": 1}
    items = [ev(f"{t}-{u}-{i}", u) for u, n in users.items() for i in range(n)]
    items.insert(2, ev(f"{t}-rejected", f"{t}a", type="Bad Type"))
    # A consumer ready beforehand takes the end offsets the moment the 202 arrives.
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    try:
        parts = await topic_partitions(settings, topic)
        before = await consumer.end_offsets(parts)
        status, answer, _ = await post(served, "openapi", orjson.dumps(items), AUTH)
        snapshot = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
    assert status == 202 and answer["accepted"] == 6, answer
    records = await read_to_highwater(settings, topic)
    # The end offsets taken right after the 202 cover every message of ours: 202 means
    # the records are in Kafka, acknowledged, not merely buffered.
    lasts: dict[int, int] = {}
    for rec in records:
        if rec.key is not None and rec.key.decode().startswith(t):
            lasts[rec.partition] = max(lasts.get(rec.partition, rec.offset), rec.offset)
            assert rec.offset >= before[TopicPartition(topic, rec.partition)]
    assert lasts, "none of our messages was found in the topic"
    for partition, last in lasts.items():
        assert snapshot[TopicPartition(topic, partition)] > last, (
            f"partition {partition}: end offset {snapshot} right after the 202 does not "
            f"cover offset {last}")
    ours = [r for r in records if r.key is not None and r.key.decode().startswith(t)]
    assert sorted(r.key.decode() for r in ours) == sorted(users), "one message per user"
    for rec in ours:
        value = orjson.loads(rec.value)
        events = value if isinstance(value, list) else [value]
        user = rec.key.decode()
        assert isinstance(value, list) == (users[user] > 1)
        assert [e["event_id"] for e in events] == [f"{t}-{user}-{i}" for i in range(users[user])]
        assert all(e["user_id"] == user for e in events)

    want = {e["event_id"] for e in items} - {f"{t}-rejected"}
    found: dict[str, Any] = {}

    def done(recs: list[Any]) -> bool:
        for r in recs:
            event = orjson.loads(r.value)
            if event["event_id"] in want:
                found[event["event_id"]] = event
        return set(found) == want

    await read_until(settings, [settings.kafka.enriched_topic], done, limit_s=30)
    assert set(found) == want
    assert all(e["source"] == "openapi" and "enrichment" in e for e in found.values())


async def read_to_highwater(settings: Settings, topic: str, limit_s: float = 10) -> list[Any]:
    """``topic`` from the start up to the high watermarks of the first fetch responses."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        parts = await topic_partitions(settings, topic)
        assert parts, f"no partitions for {topic}"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp in parts:
                highwater = consumer.highwater(tp)
                if tp not in ends and highwater is not None:
                    ends[tp] = highwater
            for tp, recs in batch.items():
                records.extend(r for r in recs if tp in ends and r.offset < ends[tp])
            if len(ends) == len(parts) and all(
                [await consumer.position(tp) >= end for tp, end in ends.items()]
            ):
                break
        else:
            raise AssertionError(f"could not read {topic} to its high watermark")
    finally:
        await consumer.stop()
    return records


# ---------------------------------------------------------------------------- (f)


@pytest.fixture
def throwaway_broker(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private Apache Kafka broker; returns (host:port, process)."""
    with private_broker(tmp_path / "kafka") as broker:
        yield broker


@pytest.mark.parametrize("warm", [True, False], ids=["producer-started", "producer-cold"])
async def test_broker_down_is_503_and_nothing_accepted(
    stack: Settings, throwaway_broker: tuple[str, subprocess.Popen[bytes]], tmp_path: Path,
    warm: bool,
) -> None:
    """warm: the ingest producer already delivered once; cold: it starts on this request."""
    address, broker = throwaway_broker
    env = isolated_env(tmp_path, COLLECTOR_KAFKA__BOOTSTRAP_SERVERS=address)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        if warm:
            status, answer, _ = await post(worker, "web", orjson.dumps(ev("up-" + tag())))
            assert (status, answer) == (202, {"accepted": 1, "rejected": [],
                                              "rejected_total": 0, "rejected_by_reason": {}})

        broker.kill()
        broker.wait(10)
        started = time.monotonic()
        items = [ev("down-" + tag(), f"du{i}") for i in range(3)]
        try:
            status, answer, headers = await post(worker, "web", orjson.dumps(items),
                                                 limit_s=20)
        except aiohttp.ClientError as exc:
            alive = worker.proc is not None and worker.proc.poll() is None
            raise AssertionError(
                f"no HTTP answer with the broker down ({exc!r}); worker alive: {alive}\n"
                + worker.text()[-3000:]
            ) from exc
        elapsed = time.monotonic() - started
        assert status == 503, (answer, elapsed)
        assert answer["accepted"] == 0
        assert int(headers["Retry-After"]) > 0
        assert elapsed < 15, f"503 took {elapsed:.1f}s"
        counts = await ingest_counts(worker)
        want = {"accepted": int(warm), "unavailable": len(items), "rejected": 0}
        assert {k: counts.get(k, 0) for k in want} == want, counts
        # the next request is answered just the same (no state left broken)
        status, answer, headers = await post(worker, "web", orjson.dumps(items), limit_s=20)
        assert (status, answer["accepted"], "Retry-After" in headers) == (503, 0, True)
        # a producer that failed to start must be closed, not left to the GC
        assert "Unclosed AIOKafkaProducer" not in worker.text()
    finally:
        # With its broker gone, a worker hangs in "Flush producer buffer..." on SIGTERM:
        # that is not what this test is about, so it is not given long.
        worker.stop(timeout=3)
