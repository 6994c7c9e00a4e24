"""A session window declared in configuration only (``window = session``), through a
real worker: its table is created at start-up and its MySQL rows equal an independent
oracle (tests.oracle.configured_session_oracle), markers included, InfluxDB holds the
same sessions, a too-late event is dead-lettered naming it, and the query API serves
the sessions.

Input: six users' bursts with pauses (several sessions each, gap 5 min), shuffled
inside the allowed lateness, a retry (same user and event_id: counted once); then, once
every session row is final, stragglers: one event bridging two emitted sessions of a
user and one moving another user's session start earlier (both rewrite final rows:
the old start becomes a ``merged_into`` marker).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.query_io import get
from tests.e2e.sinks_io import influx_create_db, influx_query
from tests.e2e.test_configured_aggregates_e2e import drop_table
from tests.e2e.test_windows_e2e import wait_for, window_env
from tests.e2e.workers import Worker
from tests.oracle import SessionRows, configured_session_oracle, session_differences

pytestmark = pytest.mark.e2e

MIN = 60_000
GAP_S = 300
ORACLE: list[tuple[str, str, str | None]] = [
    ("count", "count", None), ("sum_properties_amount", "sum", "properties.amount"),
    ("distinct_type", "distinct", "type")]
#: (start, user_id) -> (values, final, merged_into)
Rows = SessionRows


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp() * 1000)


def events_for(tag: str, t0: int) -> list[dict[str, Any]]:
    """Bursts per user over an hour, with pauses longer and shorter than the gap."""
    rng = random.Random(5)
    out: list[dict[str, Any]] = []
    for u in range(6):
        ts = t0 + rng.randrange(0, 2 * MIN)
        while ts < t0 + 30 * MIN:  # ends before 40 min: apart from the last ones
            for _ in range(rng.randrange(1, 6)):
                ts += rng.randrange(1_000, 90_000)
                event: dict[str, Any] = {"event_id": f"{tag}-{len(out)}",
                                         "user_id": f"{tag}u{u}",
                                         "type": rng.choice(["buy", "view", "cart"]), "ts": ts}
                if rng.random() < 0.7:
                    event["properties"] = {"amount": rng.choice([1.5, 2.0, 7.25, 10.0])}
                out.append(event)
            ts += rng.choice([2 * MIN, 7 * MIN, 12 * MIN])  # inside or past the gap
    # the last minutes: what the stragglers will touch (u0: two sessions 6 min apart;
    # u1: a session the straggler starts earlier)
    for i in range(3):
        out.append({"event_id": f"{tag}-a{i}", "user_id": f"{tag}u0", "type": "buy",
                    "ts": t0 + 50 * MIN + i * 1000, "properties": {"amount": 1.0}})
        out.append({"event_id": f"{tag}-b{i}", "user_id": f"{tag}u0", "type": "view",
                    "ts": t0 + 56 * MIN + i * 1000})
        out.append({"event_id": f"{tag}-c{i}", "user_id": f"{tag}u1", "type": "cart",
                    "ts": t0 + 57 * MIN + i * 1000, "properties": {"amount": 2.5}})
    return out


async def session_rows(settings: Settings, name: str) -> Rows:
    out: Rows = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(
            f"SELECT window_start, user_id, session_end, duration_seconds, `count`, "
            f"sum_properties_amount, distinct_type, distinct_type_truncated, merged_into, "
            f"final FROM `{name}` WHERE window_seconds = %s", (GAP_S,))
        for ws, uid, end, duration, c, total, kinds, trunc, into, fin in (
                await cur.fetchall()):
            start = _ms(ws)
            if into is None:
                assert duration == pytest.approx((_ms(end) - start) / 1000)
            out[(start, uid)] = ({"first_ts": start, "last_ts": _ms(end), "count": c,
                                  "sum_properties_amount": total, "distinct_type": kinds,
                                  "distinct_type_truncated": bool(trunc)},
                                 bool(fin), None if into is None else _ms(into))
    return out


differences = session_differences


async def test_configured_session_aggregate_end_to_end(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "s" + uuid.uuid4().hex[:8]
    name = f"purchase_sessions_{tag}"
    # flushes 5 s apart: an open session's row is written by the first flush that finds
    # its partition quiet, so the live answer below has a flush interval to be seen
    # before the row exists (at 0.5 s the two would race; so would the quiet follow-up
    # flush a second after it, switched off here)
    env = {**window_env(tmp_path, tag), "COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS": "5",
           "COLLECTOR_WINDOWS__QUIET_FLUSH_SECONDS": "0"}
    prefix = f"COLLECTOR_AGGREGATES__{name.upper()}__"
    env.update({prefix + "WINDOW": "session", prefix + "GAP_SECONDS": str(GAP_S),
                prefix + "MEASURES": "count,sum(properties.amount),distinct(type)"})
    settings = settings_for(env)
    assert settings.aggregates[name].window == "session"
    await ensure_topics(settings)
    await influx_create_db(settings)
    source = settings.kafka.sources[0]

    def message(e: dict[str, Any]) -> tuple[bytes, bytes]:
        return e["user_id"].encode(), orjson.dumps(e)

    try:
        worker = worker_factory(env).start()
        worker.wait_ready()
        assert f"created the MySQL table of configured aggregate {name}" in worker.text()

        t0 = (int(time.time() * 1000) - 80 * MIN) // MIN * MIN
        counted = events_for(tag, t0)
        rng = random.Random(7)
        # out of order, at most 4 min: inside the 10 min allowed lateness
        shuffled = sorted(counted, key=lambda e: e["ts"] + rng.randrange(0, 4 * MIN))
        retry = dict(rng.choice(counted))
        await produce(settings, settings.kafka.raw_topic(source),
                      [message(e) for e in [*shuffled, retry]])
        await read_until(settings, [settings.kafka.enriched_topic],
                         lambda recs: len(recs) >= len(counted), limit_s=60)
        first = configured_session_oracle(counted, name, ORACLE, gap_ms=GAP_S * 1000)

        async def settled(expected: dict[Any, dict[str, Any]]) -> Any:
            rows = await session_rows(settings, name)
            return rows if not differences(rows, expected) else None

        rows = await wait_for(lambda: settled(first), 90, f"final session rows in {name}")
        assert len(first) >= 12, len(first)  # several sessions per user (18)

        stragglers = [  # 4-5 min behind the stream time: inside the allowed lateness
            {"event_id": f"{tag}-bridge", "user_id": f"{tag}u0", "type": "cart",
             "ts": t0 + 53 * MIN, "properties": {"amount": 100.0}},
            {"event_id": f"{tag}-early", "user_id": f"{tag}u1", "type": "buy",
             "ts": t0 + 55 * MIN, "properties": {"amount": 0.5}}]
        await produce(settings, settings.kafka.raw_topic(source),
                      [message(e) for e in stragglers])
        everything = counted + stragglers
        expected = configured_session_oracle(everything, name, ORACLE, gap_ms=GAP_S * 1000)
        rows = await wait_for(lambda: settled(expected), 90, "the stragglers' sessions")
        bridged = rows[(t0 + 50 * MIN, f"{tag}u0")]
        assert bridged[0]["count"] == 7 and bridged[0]["distinct_type"] == 3
        assert rows[(t0 + 56 * MIN, f"{tag}u0")][2] == t0 + 50 * MIN  # a marker now
        assert rows[(t0 + 57 * MIN, f"{tag}u1")][2] == t0 + 55 * MIN
        markers = sum(1 for v in rows.values() if v[2] is not None)
        print(f"{name}: {len(rows)} rows, {markers} markers; u0's bridged session:",
              bridged)

        # InfluxDB: one point per session (tag user_id), markers with merged_into_ms
        async def points() -> Any:
            got = await influx_query(settings, f'SELECT * FROM "{name}"')
            live = {(p["time"], p["user_id"]): (p["count"], p["sum_properties_amount"])
                    for p in got if p.get("merged_into_ms") is None}
            want = {(i[1], i[3][0]): (v["count"], v["sum_properties_amount"])
                    for i, v in expected.items()}
            marked = {(p["time"], p["user_id"]) for p in got
                      if p.get("merged_into_ms") is not None}
            return live == want and marked == {k for k, v in rows.items() if v[2]}

        await wait_for(points, 30, f"InfluxDB points of {name}")

        # a too-late event is dead-lettered naming the session aggregate
        too_late = {"event_id": f"{tag}-late", "user_id": f"{tag}u2", "type": "buy",
                    "ts": t0 + 10 * MIN}
        await produce(settings, settings.kafka.raw_topic(source), [message(too_late)])
        def ours(recs: list[Any]) -> list[dict[str, Any]]:
            letters = [orjson.loads(r.value) for r in recs]
            return [d for d in letters if f"{tag}-late" in str(d.get("payload"))]

        dead = await read_until(settings, [settings.kafka.deadletter_topic],
                                lambda recs: bool(ours(recs)), limit_s=60)
        (letter,) = ours(dead)
        assert letter["reason"] == "late"
        assert {"user_activity", "user_sessions", name} <= {e["loc"] for e in letter["errors"]}

        status, _, body = await get(worker.port, f"/api/v1/aggregates/{name}",
                                    {"from": t0 - 10 * MIN, "to": t0 + 70 * MIN,
                                     "user_id": f"{tag}u0"})
        assert status == 200, body
        want = {i[1]: v for i, v in expected.items() if i[3] == (f"{tag}u0",)}
        got = {w["window_start_ms"]: w["values"] for w in body["windows"]}
        assert got.keys() == want.keys()
        for start, values in got.items():
            assert values == pytest.approx(want[start])
        assert all(w["final"] and w["key"] == {"user_id": f"{tag}u0"}
                   for w in body["windows"])

        # a session that just opened is answered live from the owner's state, before
        # its row is written (the flush after the event's is the first to find the
        # partition quiet; windows.session_update_seconds, 60 s, has not passed)
        at = int(time.time() * 1000) - 30_000  # open for gap + grace from now, in any rule
        fresh = {"event_id": f"{tag}-fresh", "user_id": f"{tag}u2", "type": "view",
                 "ts": at, "properties": {"amount": 2.5}}
        await produce(settings, settings.kafka.raw_topic(source), [message(fresh)])

        async def live() -> Any:
            _, _, answer = await get(worker.port, f"/api/v1/aggregates/{name}",
                                     {"from": at - MIN, "to": at + MIN,
                                      "user_id": f"{tag}u2"})
            return answer["windows"] or None

        windows = await wait_for(live, 30, "the open session in the API")
        assert [(w["window_start_ms"], w["final"], w["values"]["count"],
                 w["values"]["sum_properties_amount"]) for w in windows] == [
            (at, False, 1, 2.5)]
        assert (at, f"{tag}u2") not in await session_rows(settings, name)
    finally:
        await drop_table(settings, name)
