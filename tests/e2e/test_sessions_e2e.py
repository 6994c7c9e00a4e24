"""user_sessions on a real worker, broker, MariaDB and InfluxDB, against the session oracle.

Gap 5 min, allowed lateness 40 min.  Bursts of each user's events, shuffled (out of
order), then stragglers: events that bridge two emitted sessions, events that move a
session's start earlier, retries, and events past the allowed lateness.  MySQL's live
session rows must equal ``tests.oracle.session_oracle`` of the counted events, every
row a session left behind must be a marker leading to a live one, InfluxDB must hold
the same sessions, and the too-late events must be dead-lettered as ``late``.  Between the two
loads the worker is killed (SIGKILL) and its local store deleted, so the stragglers meet
sessions recovered from the changelog.  Printed measurements start with ``[sessions]``.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from tests.e2e.sinks_io import influx_create_db, influx_query
from tests.e2e.test_event_time_e2e import Scenario
from tests.e2e.tools import get
from tests.e2e.workers import Worker
from tests.oracle import SessionRows, session_differences, session_oracle

pytestmark = pytest.mark.e2e

MIN = 60_000
GAP_MS = 5 * MIN
#: (start, user_id) -> (values, final, merged_into)
Rows = SessionRows


def report(text: str) -> None:
    print(f"\n[sessions] {text}", flush=True)


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp() * 1000)


async def session_rows(settings: Settings, tag: str) -> Rows:
    out: Rows = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT window_start, user_id, count, types, types_truncated, session_end, "
            "duration_seconds, merged_into, final FROM user_sessions "
            "WHERE user_id LIKE %s AND window_seconds = %s", (tag + "%", GAP_MS // 1000))
        for ws, uid, c, types, trunc, end, duration, into, fin in await cur.fetchall():
            start = _ms(ws)
            assert duration == pytest.approx((_ms(end) - start) / 1000)
            out[(start, uid)] = ({"count": c, "types": sorted(t for t in types.split(",") if t),
                                  "first_ts": start, "last_ts": _ms(end),
                                  "types_truncated": bool(trunc)},
                                 bool(fin), None if into is None else _ms(into))
    return out


differences = session_differences


async def rows_equal(s: Scenario, expected: dict[Any, dict[str, Any]],
                     limit_s: float = 120) -> Rows:
    deadline = time.monotonic() + limit_s
    while True:
        rows = await session_rows(s.settings, s.tag)
        diff = differences(rows, expected)
        if not diff:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"MySQL user_sessions never matched the oracle: {diff[:8]}")
        await asyncio.sleep(0.5)


def burst(s: Scenario, user: str, start: int, count: int, rng: random.Random,
          source: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        s.counter += 1
        out.append({"event_id": f"{s.tag}-{s.counter}", "user_id": user,
                    "type": rng.choice(("click", "view", "buy")),
                    "ts": start + i * 10_000 + rng.randrange(5_000),
                    "_source": s.settings.kafka.sources[(i + source) % 2]})
    return out


async def test_sessions_merge_move_and_close_like_the_oracle(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    s = Scenario(tmp_path, COLLECTOR_WINDOWS__SESSION_GAP_SECONDS=str(GAP_MS // 1000),
                 COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="2400",
                 COLLECTOR_WEB__API_TOKEN="sessions-token")
    await s.prepare()
    await influx_create_db(s.settings)
    worker = worker_factory(s.env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    rng = random.Random(16)
    now = int(time.time() * 1000)
    base = (now - 50 * MIN) // MIN * MIN
    users = s.users[:8]
    first: list[dict[str, Any]] = []
    for n, user in enumerate(users):  # sessions at +0, +9, +20 and +35 min, 12 events each
        for offset in (0, 9, 20, 35):
            first += burst(s, user, base + offset * MIN, 12, rng, source=n)
    rng.shuffle(first)  # out of order within and across sessions
    await s.produce(first)
    rows = await rows_equal(s, session_oracle(first, gap_ms=GAP_MS))
    # shuffled across flushes, a session may have been written under a later start
    # first: such a start is a marker by now (rows_equal checked they lead to sessions)
    before = {k for k, v in rows.items() if v[2] is not None}

    # kill -9 and lose the local store: the sessions entries come back from the changelog
    worker.stop(signal.SIGKILL)
    shutil.rmtree(s.env["COLLECTOR_APP__DATADIR"], ignore_errors=True)
    worker = worker_factory(s.env, "run1").start()
    await asyncio.to_thread(worker.wait_ready, 90)

    # stragglers, ~30 min behind stream time (inside the allowed lateness of 40 min, for
    # every table): bridges between the +0 and +9 sessions of four users, and events 1 min
    # before the +20 session of the other four (its start moves)
    bridges = [burst(s, u, base + 5 * MIN + 30_000, 1, rng)[0] for u in users[:4]]
    movers = [burst(s, u, base + 19 * MIN, 1, rng)[0] for u in users[4:]]
    retried = [dict(e) for e in first if e["ts"] >= base + 35 * MIN][:10]  # same ids again
    # 40 min older than the oldest session: its window [ts, ts + gap) ended more than
    # the allowed lateness before stream time (~ +37 min)
    too_late = [burst(s, u, base - 40 * MIN, 1, rng)[0] for u in users[:3]]
    await s.produce(bridges + movers + retried + too_late)
    counted = first + bridges + movers
    expected = session_oracle(counted, gap_ms=GAP_MS)
    rows = await rows_equal(s, expected)
    markers = {k: v[2] for k, v in rows.items() if v[2] is not None}
    assert set(markers) - before == (
        {(start_before(first, u, base + 9 * MIN), u) for u in users[:4]}
        | {(start_before(first, u, base + 20 * MIN), u) for u in users[4:]})
    dead = await s.dead_letters(len(too_late))
    late = [d for d in dead if d["reason"] == "late"]
    assert {orjson.loads(d["payload"])["event_id"] for d in late} == {
        e["event_id"] for e in too_late}
    assert all("user_sessions" in {e["loc"] for e in d["errors"]} for d in late)

    # InfluxDB: one point per session (tag user_id), markers with merged_into_ms
    points = await influx_query(s.settings, "SELECT * FROM user_sessions")
    ours = [p for p in points if str(p.get("user_id", "")).startswith(s.tag)]
    live_points = {(p["time"], p["user_id"]): p["count"] for p in ours
                   if p.get("merged_into_ms") is None}
    assert live_points == {(i[1], i[3][0]): v["count"] for i, v in expected.items()}
    assert {(p["time"], p["user_id"]) for p in ours
            if p.get("merged_into_ms") is not None} == set(markers)

    # the query endpoint answers the sessions, not the markers
    user = users[0]
    body = json.loads(get(f"http://127.0.0.1:{worker.port}/api/v1/users/{user}/sessions"
                          f"?from={base - 60 * MIN}&to={now}", token="sessions-token"))
    assert [(w["window_start_ms"], w["values"]["count"]) for w in body["windows"]] == sorted(
        (i[1], v["count"]) for i, v in expected.items() if i[3] == (user,))
    report(f"(kill -9 + store wiped between the loads) {len(counted)} events of "
           f"{len(users)} users in {len(expected)} sessions: MySQL "
           f"and InfluxDB equal the oracle after {len(bridges)} bridging and {len(movers)} "
           f"start-moving stragglers ({len(markers)} marker rows, {len(before)} of them "
           f"from the shuffled first load), {len(retried)} retries "
           f"not counted, {len(late)} of {len(too_late)} too-late events dead-lettered")


def start_before(first: list[dict[str, Any]], user: str, burst_at: int) -> int:
    """The start the user's burst at ``burst_at`` had before the stragglers."""
    return min(e["ts"] for e in first
               if e["user_id"] == user and burst_at <= e["ts"] < burst_at + 3 * MIN)
