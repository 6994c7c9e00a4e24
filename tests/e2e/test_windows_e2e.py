"""Golden test: a real worker turns a fixed input into exact rows in MariaDB and InfluxDB.

Input: several users (so several partitions) and two sources, out-of-order events inside
the grace period, late events past it, then a quiet period that closes every window by
the idle timeout.  Expected rows come from ``tests.oracle``, not from collector's code.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.enrichment import UserProfile, UserRepository
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.sinks_io import influx_create_db, influx_query, mysql_rows
from tests.e2e.workers import Worker, isolated_env
from tests.oracle import oracle

pytestmark = pytest.mark.e2e


def window_env(tmp_path: Path, tag: str) -> dict[str, str]:
    return isolated_env(
        tmp_path,
        COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
        COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5",
        COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS="3",
        # the golden input's late events are 20 min behind: past a 10 min lateness
        COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="600",
        COLLECTOR_INFLUX__DATABASE=f"{tag}db",
    )


async def seed_users(settings: Settings, users: dict[str, tuple[str, str]]) -> None:
    repo = UserRepository(settings.mysql)
    try:
        for uid, (segment, country) in users.items():
            await repo.upsert(UserProfile(uid, segment, country, "pro"))
    finally:
        await repo.close()


def golden_input(tag: str, t0: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(11)
    users = [f"{tag}u{i}" for i in range(8)]
    normal = []
    for i in range(240):
        ts = t0 + i * 500 + rng.randrange(-20_000, 20_000)  # out of order, inside grace
        event = {"event_id": f"{tag}-{i}", "user_id": rng.choice(users),
                 "type": rng.choice(["click", "view", "buy"]), "ts": ts}
        if rng.random() < 0.6:
            event["value"] = rng.choice([1.5, 2.0, 7.25, 10.0])
        normal.append(event)
    late = [{"event_id": f"{tag}-late-{i}", "user_id": users[i], "type": "click",
             "ts": t0 - 20 * 60_000 + i} for i in range(5)]
    return normal, late


async def wait_for(check: Callable[[], Any], limit_s: float, what: str) -> Any:
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def test_golden_windows(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "g" + uuid.uuid4().hex[:8]
    env = window_env(tmp_path, tag)
    settings = settings_for(env)
    await ensure_topics(settings)
    await influx_create_db(settings)
    segments = {f"{tag}u{i}": (f"{tag}s{i % 3}", ["DE", "FR"][i % 2]) for i in range(8)}
    await seed_users(settings, segments)
    worker = worker_factory(env).start()
    worker.wait_ready()

    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // 60_000 * 60_000
    normal, late = golden_input(tag, t0)
    sources = settings.kafka.sources
    for i, event in enumerate(normal):
        event["_source"] = sources[i % 2]

    def message(e: dict[str, Any]) -> tuple[bytes, bytes]:
        return e["user_id"].encode(), orjson.dumps({k: v for k, v in e.items() if k[0] != "_"})

    for source in sources:
        batch = [message(e) for e in normal if e["_source"] == source]
        await produce(settings, settings.kafka.raw_topic(source), batch)
    # wait until all normal events went through, so the late ones meet a watermark
    await read_until(settings, [settings.kafka.enriched_topic],
                     lambda recs: len(recs) >= len(normal), limit_s=60)
    for e in late:
        e["_source"] = sources[0]
    await produce(settings, settings.kafka.raw_topic(sources[0]), [message(e) for e in late])

    dead = await read_until(settings, [settings.kafka.deadletter_topic],
                            lambda recs: len(recs) >= len(late), limit_s=60)
    dead_records = [orjson.loads(r.value) for r in dead]
    assert sorted(d["reason"] for d in dead_records) == ["late"] * len(late)
    assert {orjson.loads(d["payload"])["event_id"] for d in dead_records} == {
        e["event_id"] for e in late}

    for e in normal:
        e["source"] = e["_source"]
        e["segment"], e["country"] = segments[e["user_id"]]
    expected = oracle(normal)
    lo = t0 - 10 * 60_000
    hi = t0 + 10 * 60_000
    keys = {"event_stats": tag, "user_activity": tag, "segment_stats": tag}

    async def all_final() -> Any:
        rows = await mysql_rows(settings, lo, hi, keys)
        if set(rows) == set(expected) and all(final for _, final in rows.values()):
            return rows
        return None

    rows = await wait_for(all_final, 90, "final rows in MySQL")
    for ident, values in expected.items():
        got, _ = rows[ident]
        assert got == pytest.approx(values) if ident[0] != "user_activity" else got == values, (
            ident, got, values)

    points = await influx_query(settings, "SELECT * FROM event_stats")
    assert len(points) == len([i for i in expected if i[0] == "event_stats"])
    for p in points:
        want = expected[("event_stats", p["time"], 60, (p["source"], p["type"]))]
        assert p["count"] == want["count"]
        assert p["sum"] == pytest.approx(want["value_sum"])
        assert p.get("min") == want["value_min"] and p.get("max") == want["value_max"]
        assert p["final"] is True
    seg_points = await influx_query(settings, "SELECT * FROM segment_stats")
    assert len(seg_points) == len([i for i in expected if i[0] == "segment_stats"])
    for p in seg_points:
        want = expected[("segment_stats", p["time"], 300, (p["segment"], p["country"]))]
        assert (p["count"], p["sum"]) == (want["count"], pytest.approx(want["value_sum"]))
