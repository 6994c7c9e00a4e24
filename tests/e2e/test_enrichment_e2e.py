"""Enrichment through a real worker whose Redis and MariaDB are throwaway servers.

One journey, because each step starts from the state the previous one left:

1. known users are ``miss`` then ``hit``, an unknown user ``negative`` twice (the second
   time from the negative cache); /metrics agrees with the enriched topic;
2. Redis killed: events still flow, answered by MySQL (``miss``/``negative``, never
   ``degraded``);
3. MySQL killed too: events flow ``degraded`` (segment ``unknown``) within the lookup
   bound;
4. both restarted: ``hit``s return within seconds;
5. a profile update on the users topic reaches the next events within seconds (MySQL
   written, Redis invalidated); a malformed update is dead-lettered.

Throughout, every produced event_id appears in the enriched topic exactly once.
Measured transition times are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from collector.config import Settings
from collector.db import migrate
from collector.enrichment import NEGATIVE_MARKER, UserProfile, UserRepository
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.workers import Worker, isolated_env
from tests.integration.servers import MariaDBServer, RedisServer, binary

pytestmark = pytest.mark.e2e

REDIS_TIMEOUT = 0.25
MYSQL_TIMEOUT = 1.0
#: The bound the worker's Runtime gives every batch lookup (redis + mysql timeouts).
LOOKUP_TIMEOUT = REDIS_TIMEOUT + MYSQL_TIMEOUT
#: Broker round trips (produce, worker fetch, forward, our fetch) on top of the lookup.
KAFKA_SLACK = 1.5
OUTCOMES = ("hit", "miss", "negative", "degraded")
_METRIC_RE = re.compile(r'^collector_enrichment_total\{outcome="(\w+)"\}\s+(\S+)$', re.M)


# -- throwaway servers -----------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, MariaDBServer]]:
    """A fresh redis-server and mariadbd of our own (we kill them; the stack stays up)."""
    if binary("redis-server") is None or binary("mariadbd") is None:
        pytest.skip("redis-server and mariadb-server are needed")
    redis_server = RedisServer(tmp_path / "redis")
    mariadb = MariaDBServer(tmp_path / "mariadb")
    try:
        redis_server.start()
        mariadb.init()
        yield redis_server, mariadb
    finally:
        redis_server.kill()
        mariadb.kill()


# -- reading and writing the worker's topics --------------------------------------------


@dataclass
class Tap:
    """Follows the enriched and dead-letter topics from the start, in the background."""

    settings: Settings
    enriched: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    dead: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # event_id -> first
    seen_at: dict[str, float] = field(default_factory=dict)  # event_id -> monotonic
    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        kafka = self.settings.kafka
        self._consumer = AIOKafkaConsumer(
            kafka.enriched_topic,
            kafka.deadletter_topic,
            **client_kwargs(self.settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,  # our own fetch latency out of the measured delays
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="tap")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        enriched_topic = self.settings.kafka.enriched_topic
        while True:
            batch = await self._consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    if record.topic != enriched_topic:
                        self.dead.append(record)
                        continue
                    self.enriched.append(record)
                    assert record.value is not None
                    event = orjson.loads(record.value)
                    self.events.setdefault(event["event_id"], event)
                    self.seen_at.setdefault(event["event_id"], now)

    async def wait(self, check: Callable[[], bool], what: str, limit_s: float = 10.0) -> None:
        deadline = time.monotonic() + limit_s
        while not check():
            assert self._task is not None and not self._task.done(), "tap consumer died"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
            await asyncio.sleep(0.02)

    async def events_of(self, ids: list[str], limit_s: float = 10.0) -> list[dict[str, Any]]:
        """The enriched events for ``ids``, in the same order, once all arrived."""
        await self.wait(lambda: all(i in self.events for i in ids), f"{len(ids)} events", limit_s)
        return [self.events[i] for i in ids]

    def topic_outcomes(self) -> Counter[str]:
        return Counter(orjson.loads(r.value or b"")["enrichment"] for r in self.enriched)


@dataclass
class Feed:
    """Produces valid raw events (keyed by user) and remembers when each was sent."""

    producer: AIOKafkaProducer
    topic: str
    tag: str
    sent_at: dict[str, float] = field(default_factory=dict)
    _n: int = 0

    async def send(self, user_ids: list[str]) -> list[str]:
        """One event per user id (acked by the broker); returns their event ids."""
        ids, futures = [], []
        for user_id in user_ids:
            self._n += 1
            event_id = f"{self.tag}-e{self._n}"
            event = {
                "event_id": event_id,
                "user_id": user_id,
                "type": "page_view",
                "ts": int(time.time() * 1000),
            }
            self.sent_at[event_id] = time.monotonic()
            futures.append(
                await self.producer.send(self.topic, orjson.dumps(event), key=user_id.encode())
            )
            ids.append(event_id)
        await asyncio.gather(*futures)
        return ids


@pytest.fixture
async def kafka_clients(
    stack: Settings, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, str], AIOKafkaProducer]]:
    """An isolated env for the worker, its topics created, and a producer for them."""
    env = isolated_env(tmp_path)
    await ensure_topics(settings_for(env))
    producer = AIOKafkaProducer(**client_kwargs(stack), acks="all", linger_ms=0)
    await producer.start()
    try:
        yield env, producer
    finally:
        await producer.stop()


async def metric_outcomes(port: int) -> Counter[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp,
    ):
        assert resp.status == 200
        body = await resp.text()
    return Counter({name: int(float(value)) for name, value in _METRIC_RE.findall(body)})


def by_user(user_ids: list[str], events: list[dict[str, Any]]) -> dict[str, str]:
    """user_id -> the enrichment outcome its events got (all of its events agree)."""
    outcomes: dict[str, set[str]] = {}
    for user_id, event in zip(user_ids, events, strict=True):
        assert event["user_id"] == user_id
        outcomes.setdefault(user_id, set()).add(event["enrichment"])
    assert all(len(found) == 1 for found in outcomes.values()), outcomes
    return {user_id: found.pop() for user_id, found in outcomes.items()}


def _ms(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in seconds)


def delays(feed: Feed, tap: Tap, ids: list[str]) -> list[float]:
    return [tap.seen_at[i] - feed.sent_at[i] for i in ids]


# -- the journey -----------------------------------------------------------------------


async def test_enrichment_through_outages_recovery_and_updates(
    servers: tuple[RedisServer, MariaDBServer],
    kafka_clients: tuple[dict[str, str], AIOKafkaProducer],
    worker_factory: Callable[..., Worker],
) -> None:
    redis_server, mariadb = servers
    base_env, producer = kafka_clients
    env = {
        **base_env,
        "COLLECTOR_REDIS__URL": redis_server.url,
        "COLLECTOR_REDIS__TIMEOUT": str(REDIS_TIMEOUT),
        "COLLECTOR_MYSQL__DSN": mariadb.dsn,
        "COLLECTOR_MYSQL__TIMEOUT": str(MYSQL_TIMEOUT),
        # this journey is about Redis and MySQL answering (or not): the in-process copy
        # would answer the hot users through both outages; it has its own test below
        "COLLECTOR_REDIS__LOCAL_TTL": "0",
    }
    settings = settings_for(env)
    tag = "e" + uuid.uuid4().hex[:8]
    known = {f"{tag}k{i}": UserProfile(f"{tag}k{i}", f"seg{i}", "DE", "pro") for i in range(3)}
    unknown = f"{tag}nobody"
    users = [*known, unknown]

    await migrate(settings)
    repo = UserRepository(settings.mysql)
    try:
        for profile in known.values():
            await repo.upsert(profile)
    finally:
        await repo.close()

    worker = worker_factory(env).start()
    tap = Tap(settings)
    cache = aioredis.Redis.from_url(redis_server.url, socket_timeout=1)
    try:
        ready_s = await asyncio.to_thread(worker.wait_ready)
        await tap.start()
        feed = Feed(producer, settings.kafka.raw_topic("web"), tag)
        await _journey(
            tap,
            feed,
            worker,
            redis_server,
            mariadb,
            cache,
            settings,
            known,
            unknown,
            users,
            ready_s,
        )
        ids = [orjson.loads(r.value or b"")["event_id"] for r in tap.enriched]
        assert ids and len(ids) == len(set(ids)), "an event was forwarded twice"
    except BaseException:
        print(f"\n--- worker log (tail) ---\n{worker.text()[-6000:]}")
        raise
    else:
        noteworthy = [
            line
            for line in worker.text().splitlines()
            if "Traceback" in line or "ERROR" in line or "WARNING" in line
        ]
        print("\n".join(["worker warnings/errors:", *noteworthy[:40]]))
    finally:
        await tap.stop()
        await cache.aclose()


async def _journey(
    tap: Tap,
    feed: Feed,
    worker: Worker,
    redis_server: RedisServer,
    mariadb: MariaDBServer,
    cache: aioredis.Redis,
    settings: Settings,
    known: dict[str, UserProfile],
    unknown: str,
    users: list[str],
    ready_s: float,
) -> None:
    report = [f"worker ready after {ready_s:.1f}s"]
    prefix = settings.redis.key_prefix

    # 1. First sight: miss (from MySQL) / negative; cached; then hit / negative again.
    first = await feed.send(users)
    events = await tap.events_of(first)
    assert by_user(users, events) == {**{u: "miss" for u in known}, unknown: "negative"}
    for user_id, event in zip(users, events, strict=True):
        profile = known.get(user_id)
        assert event["segment"] == (profile.segment if profile else "unknown")
        assert event["country"] == (profile.country if profile else "unknown")
        assert event["plan"] == (profile.plan if profile else "unknown")
    baseline = max(delays(feed, tap, first))

    async def cached() -> dict[str, bytes | None]:
        values = await cache.mget([prefix + u for u in users])
        return {u: v if isinstance(v, bytes) else None for u, v in zip(users, values, strict=True)}

    deadline = time.monotonic() + 2
    while None in (await cached()).values():  # the fill runs after the answer
        assert time.monotonic() < deadline, f"cache not filled: {await cached()}"
        await asyncio.sleep(0.05)
    entries = await cached()
    assert entries[unknown] == NEGATIVE_MARKER
    assert {u: UserProfile.from_json(entries[u] or b"") for u in known} == known

    again = await feed.send(users + users)
    events = await tap.events_of(again)
    assert by_user(users + users, events) == {**{u: "hit" for u in known}, unknown: "negative"}
    assert [e["segment"] for e in events[: len(known)]] == [p.segment for p in known.values()]
    metrics = await metric_outcomes(worker.port)
    topic = tap.topic_outcomes()
    assert topic == Counter(hit=6, miss=3, negative=3), topic
    assert metrics == topic, f"/metrics {metrics} != enriched topic {topic}"

    # 2. Redis gone: MySQL answers, nothing degraded (right away, and again once the
    # Redis circuit half-opens and its probe fails).
    redis_server.kill()
    no_redis: list[str] = []
    for _ in range(2):
        ids = await feed.send(users)
        no_redis += ids
        events = await tap.events_of(ids)
        assert by_user(users, events) == {**{u: "miss" for u in known}, unknown: "negative"}
        assert [e["segment"] for e in events[: len(known)]] == [p.segment for p in known.values()]
        await asyncio.sleep(1.2)  # past the worker's 1 s circuit backoff
    redis_down_max = max(delays(feed, tap, no_redis))

    # 3. MySQL unusable too: events degrade (segment "unknown") within the lookup bound,
    # first while it hangs (SIGSTOP: the timeout is what ends the wait), then while it
    # refuses connections (SIGKILL). Each round after 1.2 s lets the circuits probe again.
    async def degraded_rounds(rounds: int) -> list[str]:
        sent: list[str] = []
        for n in range(rounds):
            if n:
                await asyncio.sleep(1.2)  # past the worker's 1 s circuit backoff
            ids = await feed.send(users)
            sent += ids
            events = await tap.events_of(ids)
            assert by_user(users, events) == dict.fromkeys(users, "degraded")
            assert {(e["segment"], e["country"], e["plan"]) for e in events} == {
                ("unknown", "unknown", "unknown")
            }
        return sent

    mariadb.pause()
    paused_at = time.monotonic()
    hung = await degraded_rounds(2)
    until_degraded_hung = tap.seen_at[hung[0]] - paused_at
    await asyncio.sleep(1.2)
    await asyncio.to_thread(mariadb.kill)
    killed_at = time.monotonic()
    refused = await degraded_rounds(2)
    until_degraded_refused = tap.seen_at[refused[0]] - killed_at
    hung_delays, refused_delays = delays(feed, tap, hung), delays(feed, tap, refused)
    assert max(hung_delays + refused_delays) < LOOKUP_TIMEOUT + KAFKA_SLACK, (
        hung_delays,
        refused_delays,
    )

    # 4. Both back (Redis empty, like a lost cache): hits return within seconds.
    began = time.monotonic()
    await asyncio.gather(asyncio.to_thread(redis_server.start), asyncio.to_thread(mariadb.start))
    restarted = time.monotonic()
    await cache.connection_pool.disconnect()  # our own client's connection died with Redis
    watched = next(iter(known))
    recovery: list[str] = []
    while True:
        recovery += await feed.send([watched])
        await asyncio.sleep(0.2)
        outcomes = [tap.events[i]["enrichment"] for i in recovery if i in tap.events]
        if "hit" in outcomes:
            break
        assert time.monotonic() - restarted < 8, f"no hit 8s after restart: {outcomes}"
    first_hit = next(i for i in recovery if tap.events.get(i, {}).get("enrichment") == "hit")
    first_answer = next(
        i for i in recovery if tap.events.get(i, {}).get("enrichment") in ("miss", "hit")
    )
    until_answers = tap.seen_at[first_answer] - restarted
    until_hits = tap.seen_at[first_hit] - restarted
    assert until_hits < 5, f"hits came back only after {until_hits:.1f}s"
    assert tap.events[first_hit]["segment"] == known[watched].segment

    # 5. Profile updates: MySQL written, Redis invalidated, the next events see them.
    # One user's profile is cached (hit), the other is cached as unknown (negative
    # marker): without the invalidation both would stay stale for the cache TTLs.
    target = list(known)[1]
    pair = [target, unknown]
    deadline = time.monotonic() + 5
    while True:
        probes = await tap.events_of(await feed.send(pair))
        marker = await cache.get(prefix + unknown)
        if probes[0]["enrichment"] == "hit" and marker == NEGATIVE_MARKER:
            break
        assert time.monotonic() < deadline, f"not cached: {probes}, {marker!r}"
    assert [(p["segment"], p["enrichment"]) for p in probes] == [
        (known[target].segment, "hit"),
        ("unknown", "negative"),
    ]
    new = {
        target: UserProfile(target, "vip", "FR", "enterprise"),
        unknown: UserProfile(unknown, "newcomer", "JP", "free"),
    }
    users_topic = settings.kafka.users_topic
    for profile in new.values():
        update = orjson.dumps(
            {
                "user_id": profile.user_id,
                "segment": profile.segment,
                "country": profile.country,
                "plan": profile.plan,
            }
        )
        await (await feed.producer.send(users_topic, update, key=profile.user_id.encode()))
    updated_at = time.monotonic()
    after: list[str] = []

    def visible() -> bool:
        arrived = [tap.events[i] for i in after if i in tap.events]
        return all(
            any(e["user_id"] == u and e["segment"] == p.segment for e in arrived)
            for u, p in new.items()
        )

    while not visible():
        assert time.monotonic() - updated_at < 10, "updates never visible: " + repr(
            [tap.events[i] for i in after if i in tap.events][-2:]
        )
        after += await feed.send(pair)
        await asyncio.sleep(0.1)
    await tap.events_of(after)
    until_visible: dict[str, float] = {}
    for user_id, profile in new.items():
        mine = [tap.events[i] for i in after if tap.events[i]["user_id"] == user_id]
        seen = [(e["segment"], e["country"], e["plan"]) for e in mine]
        fresh = (profile.segment, profile.country, profile.plan)
        k = seen.index(fresh)
        # Events of one user are processed in order: once new, never old again; the
        # first new one was reloaded from MySQL (the cache entry was dropped).
        assert seen[k:] == [fresh] * (len(seen) - k), seen
        assert mine[k]["enrichment"] == "miss", mine[k]
        until_visible[user_id] = tap.seen_at[mine[k]["event_id"]] - updated_at
    repo = UserRepository(settings.mysql)
    try:
        assert await repo.get_many(pair) == new
    finally:
        await repo.close()
    assert max(until_visible.values()) < 5, f"updates visible only after {until_visible}"

    bad = b'{"user_id": "' + target.encode() + b'", "segment": '
    await (await feed.producer.send(users_topic, bad, key=target.encode()))
    await tap.wait(
        lambda: any(orjson.loads(r.value or b"")["source"] == "users" for r in tap.dead),
        "the bad update's dead letter",
    )
    dead = [orjson.loads(r.value or b"") for r in tap.dead]
    from_users = [d for d in dead if d["source"] == "users"]
    assert len(from_users) == 1, from_users
    assert from_users[0]["reason"] == "malformed_json"
    assert from_users[0]["topic"] == users_topic
    assert from_users[0]["payload"] == bad.decode()
    assert [d for d in dead if d["source"] not in ("users", "sink")] == []

    # Nothing lost, nothing doubled; /metrics counted exactly what the topic carries.
    produced = Counter(list(feed.sent_at))
    delivered = Counter(orjson.loads(r.value or b"")["event_id"] for r in tap.enriched)
    assert delivered == produced, {
        "missing": sorted(set(produced) - set(delivered)),
        "doubled": sorted(i for i, n in delivered.items() if n > 1),
        "foreign": sorted(set(delivered) - set(produced)),
    }
    topic = tap.topic_outcomes()
    metrics = await metric_outcomes(worker.port)
    assert metrics == topic, f"/metrics {metrics} != enriched topic {topic}"
    assert set(topic) <= set(OUTCOMES)
    assert worker.proc is not None and worker.proc.poll() is None, "worker died"

    report += [
        f"baseline produce->enriched {baseline * 1000:.0f} ms",
        f"redis down: max delay {redis_down_max * 1000:.0f} ms",
        f"mysql hung: first degraded seen {until_degraded_hung * 1000:.0f} ms after SIGSTOP; "
        f"delays {_ms(hung_delays)} ms (bound {LOOKUP_TIMEOUT:.2f}s + Kafka)",
        f"mysql killed: first degraded seen {until_degraded_refused * 1000:.0f} ms after "
        f"SIGKILL; delays {_ms(refused_delays)} ms",
        f"restart took {(restarted - began) * 1000:.0f} ms; answers after "
        f"{until_answers * 1000:.0f} ms, hits after {until_hits * 1000:.0f} ms",
        f"profile updates visible after {until_visible[target] * 1000:.0f} ms (cached user),"
        f" {until_visible[unknown] * 1000:.0f} ms (new user, negative-cached before)",
        f"outcomes {dict(topic)}",
    ]
    print("\n" + "\n".join(report))


async def redis_calls(cache: aioredis.Redis, command: str) -> int:
    stats = await cache.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_hot_user_costs_no_redis_call_and_an_update_still_shows_at_once(
    servers: tuple[RedisServer, MariaDBServer],
    kafka_clients: tuple[dict[str, str], AIOKafkaProducer],
    worker_factory: Callable[..., Worker],
) -> None:
    """redis.local_ttl: a worker keeps Redis' answers in process, so a user seen again
    within it costs no MGET; an update on the users topic drops the copy at once (with
    a 60 s copy, the old profile would be served for a minute without that)."""
    redis_server, mariadb = servers
    base_env, producer = kafka_clients
    env = {
        **base_env,
        "COLLECTOR_REDIS__URL": redis_server.url,
        "COLLECTOR_REDIS__TIMEOUT": str(REDIS_TIMEOUT),
        "COLLECTOR_MYSQL__DSN": mariadb.dsn,
        "COLLECTOR_MYSQL__TIMEOUT": str(MYSQL_TIMEOUT),
        "COLLECTOR_REDIS__LOCAL_TTL": "60",
    }
    settings = settings_for(env)
    tag = "e" + uuid.uuid4().hex[:8]
    hot = UserProfile(f"{tag}hot", "seg0", "DE", "pro")
    await migrate(settings)
    repo = UserRepository(settings.mysql)
    try:
        await repo.upsert(hot)
    finally:
        await repo.close()
    worker = worker_factory(env).start()
    tap = Tap(settings)
    cache = aioredis.Redis.from_url(redis_server.url, socket_timeout=1)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await tap.start()
        feed = Feed(producer, settings.kafka.raw_topic("web"), tag)
        first = await tap.events_of(await feed.send([hot.user_id]))
        assert first[0]["enrichment"] == "miss"
        deadline = time.monotonic() + 5
        while await cache.get(settings.redis.key_prefix + hot.user_id) is None:
            assert time.monotonic() < deadline, "the Redis fill never came"
            await asyncio.sleep(0.05)
        warm = await tap.events_of(await feed.send([hot.user_id]))  # Redis, then kept
        assert warm[0]["enrichment"] == "hit"
        mgets = await redis_calls(cache, "mget")
        again = []
        for _ in range(10):  # one batch each: without the copy, one MGET each
            again += await tap.events_of(await feed.send([hot.user_id]))
        assert [(e["enrichment"], e["segment"]) for e in again] == [("hit", hot.segment)] * 10
        assert await redis_calls(cache, "mget") == mgets, "answered in process"

        new = UserProfile(hot.user_id, "vip", "FR", "enterprise")
        update = orjson.dumps({"user_id": new.user_id, "segment": new.segment,
                               "country": new.country, "plan": new.plan})
        await (await feed.producer.send(settings.kafka.users_topic, update,
                                        key=new.user_id.encode()))
        updated_at = time.monotonic()
        after: list[dict[str, Any]] = []
        while not any(e["segment"] == new.segment for e in after):
            assert time.monotonic() - updated_at < 10, f"update not visible: {after[-2:]}"
            after += await tap.events_of(await feed.send([hot.user_id]))
            await asyncio.sleep(0.1)
        k = next(i for i, e in enumerate(after) if e["segment"] == new.segment)
        assert [e["segment"] for e in after[k:]] == [new.segment] * (len(after) - k)
        assert after[k]["enrichment"] == "miss", after[k]  # reloaded: the copy was dropped
        print(f"\nupdate visible after {time.monotonic() - updated_at:.2f}s with a 60 s copy")
    except BaseException:
        print(f"\n--- worker log (tail) ---\n{worker.text()[-6000:]}")
        raise
    finally:
        await tap.stop()
        await cache.aclose()
