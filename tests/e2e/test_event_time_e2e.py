"""Event time the way producers really send it, on real workers and the real broker.

Each test is one traffic pattern that broke the aggregates before: a worker idle before
an hour of old data, late events after a window was emitted, a device with a fast
clock, retries (Kafka and HTTP), one user's events on two partitions or from kcat.
MySQL must end equal to ``tests.oracle`` computed from the events alone, and the
dead-letter topic must hold exactly the events the rules call late.  Printed
measurements start with ``[event-time]``.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.sinks_io import Ident, mysql_rows
from tests.e2e.test_windows_e2e import seed_users
from tests.e2e.workers import Worker, isolated_env
from tests.oracle import oracle
from tests.programs import ensure_program

pytestmark = pytest.mark.e2e

MIN = 60_000
TYPES = ("click", "view", "buy")
VALUES = (1.5, 2.0, 7.25, 10.0)  # binary fractions: sums are exact in any order


def report(text: str) -> None:
    print(f"\n[event-time] {text}", flush=True)


class Scenario:
    """A worker of its own, test-unique sources, users and segments."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tag = "e" + uuid.uuid4().hex[:8]
        self.env = isolated_env(
            tmp_path, COLLECTOR_KAFKA__SOURCES=f"{self.tag}a,{self.tag}b",
            COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5",
            COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS="3",
            COLLECTOR_INFLUX__DATABASE=f"{self.tag}db", **env)
        self.settings = settings_for(self.env)
        self.users = [f"{self.tag}u{i}" for i in range(12)]
        self.profiles = {u: (f"{self.tag}s{i % 3}", ["DE", "FR"][i % 2])
                         for i, u in enumerate(self.users)}
        self.counter = 0

    async def prepare(self) -> None:
        await ensure_topics(self.settings)
        await seed_users(self.settings, self.profiles)

    def events(self, start_ms: int, count: int, step_ms: int, jitter_ms: int = 10_000,
               seed: int = 1) -> list[dict[str, Any]]:
        """Each source's events in time order, at most ``jitter_ms`` out of order."""
        rng = random.Random(seed)
        out = []
        for i in range(count):
            self.counter += 1
            e: dict[str, Any] = {
                "event_id": f"{self.tag}-{self.counter}", "user_id": rng.choice(self.users),
                "type": rng.choice(TYPES),
                "ts": start_ms + i * step_ms - rng.randrange(jitter_ms + 1),
                "_source": self.settings.kafka.sources[i % 2]}
            if rng.random() < 0.6:
                e["value"] = rng.choice(VALUES)
            out.append(e)
        return out

    async def produce(self, events: list[dict[str, Any]]) -> None:
        for source in self.settings.kafka.sources:
            batch = [(e["user_id"].encode(), body(e)) for e in events if e["_source"] == source]
            if batch:
                await produce(self.settings, self.settings.kafka.raw_topic(source), batch)

    def expected(self, counted: list[dict[str, Any]]) -> dict[Ident, dict[str, Any]]:
        for e in counted:
            e["source"] = e["_source"]
            e["segment"], e["country"] = self.profiles[e["user_id"]]
        return oracle(counted)

    async def rows_equal(self, expected: dict[Ident, dict[str, Any]], limit_s: float = 120,
                         final: bool = True) -> dict[Ident, tuple[dict[str, Any], bool]]:
        """Wait until MySQL holds exactly ``expected`` (all final), then return it."""
        lo = min(i[1] for i in expected) - 10 * MIN
        hi = max(i[1] for i in expected) + 10 * MIN
        keys = dict.fromkeys(("event_stats", "user_activity", "segment_stats"), self.tag)
        deadline = time.monotonic() + limit_s
        while True:
            rows = await mysql_rows(self.settings, lo, hi, keys)
            diff = differences(rows, expected, final)
            if not diff:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"MySQL never matched the oracle: {diff[:8]}")
            await asyncio.sleep(0.5)

    async def dead_letters(self, expected: int, limit_s: float = 30) -> list[dict[str, Any]]:
        topic = self.settings.kafka.deadletter_topic
        records = await read_until(self.settings, [topic], lambda r: len(r) >= expected,
                                   limit_s=limit_s)
        return [orjson.loads(r.value) for r in records]


def body(e: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in e.items() if k[0] != "_"})


def differences(rows: dict[Ident, tuple[dict[str, Any], bool]],
                expected: dict[Ident, dict[str, Any]], final: bool) -> list[str]:
    out = [f"missing {i}" for i in expected if i not in rows]
    out += [f"extra {i}" for i in rows if i not in expected]
    for ident, want in expected.items():
        if ident in rows:
            got, is_final = rows[ident]
            if got != pytest.approx(want) if ident[0] != "user_activity" else got != want:
                out.append(f"{ident}: {got} != {want}")
            elif final and not is_final:
                out.append(f"{ident} not final")
    return out


async def revisions(settings: Settings, tag: str) -> dict[tuple[str, int, tuple[str, ...]], int]:
    out: dict[tuple[str, int, tuple[str, ...]], int] = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for table, cols in (("event_stats", "source, type"), ("user_activity", "user_id"),
                            ("segment_stats", "segment, country")):
            first = cols.split(",")[0]
            await cur.execute(f"SELECT window_start, {cols}, revision FROM {table} "
                              f"WHERE {first} LIKE %s", (tag + "%",))
            for ws, *key, rev in await cur.fetchall():
                ms = int(ws.replace(tzinfo=UTC).timestamp() * 1000)
                out[(table, ms, tuple(key))] = rev
    return out


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        return await resp.text()


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


async def test_an_idle_worker_counts_an_hour_of_old_events(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    s = Scenario(tmp_path)
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    await asyncio.sleep(8)  # idle for longer than the idle timeout (3 s) before any data
    start = int(time.time() * 1000) - 70 * MIN
    events = s.events(start, 3000, 1_200)  # an hour of events, stamped 10-70 min ago
    await s.produce(events)
    await s.rows_equal(s.expected(events))
    dead = await s.dead_letters(0, limit_s=3)
    report(f"idle worker, then {len(events)} events 10-70 min old: MySQL equals the oracle, "
           f"{len(dead)} dead letters")
    assert dead == []


async def test_late_events_update_emitted_windows_within_the_allowed_lateness(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    s = Scenario(tmp_path, COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="1800")
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    now = int(time.time() * 1000)
    base = (now - 40 * MIN) // MIN * MIN
    first = s.events(base, 300, 1_000, jitter_ms=0, seed=2)  # 5 minutes of events
    ahead = s.events(base + 15 * MIN, 60, 1_000, jitter_ms=0, seed=3)  # stream time +15 min
    await s.produce(first + ahead)
    await s.rows_equal(s.expected(first + ahead))  # emitted: final, revision 0
    before = await revisions(s.settings, s.tag)
    late = s.events(base + 5_000, 120, 1_000, jitter_ms=0, seed=4)  # ~10 min behind
    too_late = s.events(base - 40 * MIN, 5, 1_000, jitter_ms=0, seed=5)  # 55 min behind
    await s.produce(late + too_late)
    await s.rows_equal(s.expected(first + ahead + late))
    after = await revisions(s.settings, s.tag)
    corrected = {k for k in after if after[k] > before.get(k, 0)}
    touched = {(i[0], i[1], i[3]) for i in s.expected(late)}
    dead = await s.dead_letters(len(too_late))
    report(f"{len(late)} events ~10 min behind emitted windows: {len(corrected)} rows "
           f"corrected (revision up), MySQL equals the oracle; {len(dead)} of "
           f"{len(too_late)} events 55 min behind (lateness 30 min) dead-lettered as late")
    assert corrected and corrected <= touched
    assert all(before.get(k, 0) == 0 for k in corrected)  # first writes were revision 0
    assert sorted(d["reason"] for d in dead) == ["late"] * len(too_late)
    assert {orjson.loads(d["payload"])["event_id"] for d in dead} == {
        e["event_id"] for e in too_late}


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_revisions_keep_rising_across_a_restart(
    store: str, migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """Windows corrected by late events, then a SIGTERM restart (with the memory store,
    state comes back from the changelog only), then more late events for the same
    windows: no row's revision may go down, and the second correction must raise it again
    (a reader that polls for revision > seen would otherwise miss it)."""
    s = Scenario(tmp_path, COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="1800",
                 COLLECTOR_APP__STORE=store)
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    now = int(time.time() * 1000)
    base = (now - 40 * MIN) // MIN * MIN
    first = s.events(base, 180, 1_000, jitter_ms=0, seed=12)
    ahead = s.events(base + 15 * MIN, 60, 1_000, jitter_ms=0, seed=13)
    late = s.events(base + 5_000, 60, 1_000, jitter_ms=0, seed=14)
    await s.produce(first + ahead)
    await s.rows_equal(s.expected(first + ahead))
    await s.produce(late)
    await s.rows_equal(s.expected(first + ahead + late))
    corrected = await revisions(s.settings, s.tag)
    assert any(rev > 0 for rev in corrected.values())
    assert worker.stop() == 0
    again = worker_factory(s.env, name="restarted").start()
    await asyncio.to_thread(again.wait_ready, 90)
    later = s.events(base + 7_000, 60, 1_000, jitter_ms=0, seed=15)  # the same windows
    await s.produce(later)
    await s.rows_equal(s.expected(first + ahead + late + later))
    await asyncio.sleep(3)  # a restart re-sends what it recovered: let those writes land
    after = await revisions(s.settings, s.tag)
    down = {k: (corrected[k], after.get(k)) for k in corrected if after.get(k, -1) < corrected[k]}
    touched = {(i[0], i[1], i[3]) for i in s.expected(later)}
    stuck = {k: (corrected[k], after[k]) for k in touched
             if corrected.get(k, 0) > 0 and after[k] <= corrected[k]}
    report(f"[{store}] restart between two corrections: {len(corrected)} rows, "
           f"{sum(r > 0 for r in corrected.values())} corrected before it, {len(down)} went "
           f"down, {len(stuck)} corrected again without a higher revision")
    assert not down, down
    assert not stuck, stuck


async def test_a_fast_device_clock_makes_nothing_else_late(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    s = Scenario(tmp_path, COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="300",
                 COLLECTOR_WINDOWS__GRACE_SECONDS="60")
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    now = int(time.time() * 1000)
    future = s.events(now + 240_000, 200, 100, jitter_ms=0, seed=6)  # 4 min ahead
    await s.produce(future)
    await asyncio.sleep(2)  # processed before the rest arrives
    on_time = s.events(now, 200, 10, jitter_ms=0, seed=7)
    older = s.events(now - 3 * MIN, 200, 100, jitter_ms=0, seed=8)  # 3 min old
    await s.produce(on_time + older)
    await s.rows_equal(s.expected(future + on_time + older), final=False)
    dead = await s.dead_letters(0, limit_s=3)
    report(f"{len(future)} events 4 min ahead, then {len(on_time)} on time and "
           f"{len(older)} 3 min old (lateness 5 min): {len(dead)} dead letters")
    assert dead == []


async def test_the_same_events_twice_and_an_http_retry_count_once(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    s = Scenario(tmp_path, COLLECTOR_WEB__INGEST_TOKEN="ingest-secret-0123456789")
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    now = int(time.time() * 1000)
    events = s.events(now - 20 * MIN, 400, 1_000, seed=9)
    await s.produce(events)
    await s.produce(events)  # a producer that retried a whole batch
    posted = s.events(now - 15 * MIN, 50, 1_000, seed=10)
    for e in posted:
        e["_source"] = s.settings.kafka.sources[0]
    url = f"http://127.0.0.1:{worker.port}/api/v1/events/{s.settings.kafka.sources[0]}"
    headers = {"Authorization": "Bearer ingest-secret-0123456789",
               "Content-Type": "application/json"}
    payload = orjson.dumps([{k: v for k, v in e.items() if k[0] != "_"} for e in posted])
    async with aiohttp.ClientSession() as session:
        for _attempt in range(2):  # the client saw no answer and sent it again
            async with session.post(url, data=payload, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
    await s.rows_equal(s.expected(events + posted))
    text = await metrics_text(worker.port)
    duplicates = metric_sum(text, "collector_events_duplicate_total")
    report(f"{len(events)} events produced twice and {len(posted)} posted twice: MySQL "
           f"equals the oracle of one copy; collector_events_duplicate_total {duplicates:.0f}")
    assert duplicates == len(events) + len(posted)


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_busy_windows_count_each_event_once_across_a_restart(
    store: str, migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """About 50 events per user and minute, so each window seals its ids into chunks
    (engine/dedupe.py), which live in the store and the changelog, never in the cache.
    Every event is produced twice, then the worker restarts (with the memory store its
    state comes back from the changelog only) and gets every event a third time, plus
    new ones for the same windows: each is counted once."""
    s = Scenario(tmp_path, COLLECTOR_APP__STORE=store)
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    base = (int(time.time() * 1000) - 10 * MIN) // MIN * MIN
    events = s.events(base, 1_200, 100, jitter_ms=5_000, seed=16)
    await s.produce(events)
    await s.produce(events)
    await s.rows_equal(s.expected([dict(e) for e in events]))  # (it adds fields)
    first = metric_sum(await metrics_text(worker.port), "collector_events_duplicate_total")
    assert first == len(events)
    assert worker.stop() == 0
    again = worker_factory(s.env, name="restarted").start()
    await asyncio.to_thread(again.wait_ready, 90)
    more = s.events(base + 30_000, 300, 100, jitter_ms=5_000, seed=17)
    await s.produce(events + more)
    await s.rows_equal(s.expected(events + more))
    duplicates = metric_sum(await metrics_text(again.port), "collector_events_duplicate_total")
    report(f"[{store}] {len(events)} events over 2 minutes of 12 users, produced twice, then "
           f"a restart, all again and {len(more)} new: MySQL equals the oracle of one copy; "
           f"duplicates {first:.0f} before the restart, {duplicates:.0f} after")
    assert duplicates == len(events)


async def test_one_users_events_on_two_partitions_and_from_kcat_count_once(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """Unkeyed messages, an explicit wrong partition, and kcat's own partitioner (CRC32,
    not murmur2): every event is counted once, in its user's windows."""
    s = Scenario(tmp_path)
    await s.prepare()
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    now = int(time.time() * 1000)
    events = s.events(now - 20 * MIN, 300, 1_000, seed=11)
    thirds = len(events) // 3
    unkeyed, wrong, by_kcat = events[:thirds], events[thirds:2 * thirds], events[2 * thirds:]
    from aiokafka import AIOKafkaProducer

    from collector.engine.processor import home_partition
    from collector.kafka.clients import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(s.settings))
    await producer.start()
    try:
        futures = []
        for i, e in enumerate(unkeyed):
            futures.append(await producer.send(
                s.settings.kafka.raw_topic(e["_source"]), body(e), partition=i % 4))
        for e in wrong:
            other = (home_partition(e["user_id"], 4) + 1) % 4
            futures.append(await producer.send(
                s.settings.kafka.raw_topic(e["_source"]), body(e),
                key=e["user_id"].encode(), partition=other))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    kcat = ensure_program("kcat", "kcat")
    for source in s.settings.kafka.sources:
        lines = "".join(f"{e['user_id']}\t{body(e).decode()}\n" for e in by_kcat
                        if e["_source"] == source)
        done = await asyncio.to_thread(
            subprocess.run,
            [kcat, "-P", "-b", ",".join(s.settings.kafka.bootstrap_servers), "-t",
             s.settings.kafka.raw_topic(source), "-K", "\t"],
            input=lines, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    await s.rows_equal(s.expected(events))
    text = await metrics_text(worker.port)
    rerouted = metric_sum(text, "collector_events_rerouted_total")
    consumed = metric_sum(text, "collector_events_consumed_total")
    report(f"{len(events)} events ({len(unkeyed)} unkeyed, {len(wrong)} on a wrong "
           f"partition, {len(by_kcat)} from kcat): MySQL equals the oracle; "
           f"{rerouted:.0f} rerouted to their user's partition, {consumed:.0f} consumed")
    assert rerouted >= len(wrong)
    assert consumed == len(events)  # a rerouted event is consumed where it belongs
