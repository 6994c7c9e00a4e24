"""Two workers in one group: queries routed to the owner, then failover on SIGTERM and kill -9.

Each worker owns part of the partitions.  Every user's activity, asked from either worker,
must equal the oracle (so a worker that does not own the user routes to the one that
does), and stats must be equal from both.  Then one worker stops and we measure how long
until the other answers every query correctly, polling every 0.2 s.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.query_io import (
    expected,
    get,
    make_events,
    produce_events,
    profiles,
    seed_profiles,
    strip,
)
from tests.e2e.workers import Worker, free_port, isolated_env

pytestmark = pytest.mark.e2e

MIN = 60_000


class Expectation:
    """What every worker must answer, and checks against it."""

    def __init__(self, events: list[dict[str, Any]], users: dict[str, tuple[str, str]],
                 sources: list[str], lo: int, hi: int):
        self.users, self.range = list(users), {"from": lo, "to": hi}
        # one query per test-unique source and segment: MySQL holds other tests' rows too
        self.queries: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
        for source in sources:
            self.queries.append(("/api/v1/stats/events", {**self.range, "source": source},
                                 expected(events, "event_stats", lo, hi, users, source=source)))
        for segment in sorted({seg for seg, _ in users.values()}):
            self.queries.append(("/api/v1/segments", {**self.range, "segment": segment},
                                 expected(events, "segment_stats", lo, hi, users,
                                          segment=segment)))
        for user in users:
            self.queries.append((f"/api/v1/users/{user}/activity", self.range,
                                 expected(events, "user_activity", lo, hi, users, user_id=user)))

    async def answers(self, port: int, statuses: Counter[str] | None = None) -> list[Any]:
        """Every query's windows from the worker on ``port`` (None where it failed).

        ``statuses`` counts what came back: a status, ``503+Retry-After``, or ``no answer``.
        """
        try:
            got = await asyncio.gather(*(get(port, path, params, limit_s=8)
                                         for path, params, _ in self.queries))
        except (OSError, TimeoutError):
            if statuses is not None:
                statuses["no answer"] += 1
            return [None] * len(self.queries)
        if statuses is not None:
            for status, headers, _ in got:
                retry = status == 503 and headers.get("Retry-After") == "1"
                statuses["503+Retry-After" if retry else str(status)] += 1
        return [strip(body["windows"]) if status == 200 else None for status, _, body in got]

    async def correct(self, port: int, statuses: Counter[str] | None = None) -> bool:
        """Every query answered 200 and equal to the oracle by the worker on ``port``."""
        got = await self.answers(port, statuses)
        return all(windows == want for windows, (_, _, want) in zip(got, self.queries,
                                                                    strict=True))

    async def owned_by(self, port: int) -> set[str]:
        """Users whose partition the worker on ``port`` answers locally (it owns them)."""
        out = set()
        for user in self.users:
            try:
                status, _, _ = await get(port, f"/api/v1/users/{user}/activity",
                                         {**self.range, "scope": "local"}, limit_s=8)
            except (OSError, TimeoutError):
                continue
            if status == 200:
                out.add(user)
        return out


async def until(check: Callable[[], Any], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {limit_s}s waiting for {what}")


async def split_and_correct(exp: Expectation, a: Worker, b: Worker) -> None:
    """Both workers own some users, together all of them, and both answer correctly."""
    async def check() -> bool:
        owned_a, owned_b = await exp.owned_by(a.port), await exp.owned_by(b.port)
        if not owned_a or not owned_b or owned_a | owned_b != set(exp.users):
            return False
        if owned_a & owned_b:
            return False
        return await exp.correct(a.port) and await exp.correct(b.port)

    await until(check, 150, "two workers splitting the partitions and answering correctly")
    assert await exp.answers(a.port) == await exp.answers(b.port)


async def failover(exp: Expectation, stopped: Worker, survivor: Worker, sig: int,
                   label: str) -> float:
    """Stop ``stopped`` with ``sig``; seconds until ``survivor`` answers all correctly.

    Only answers to polls that began after the stopped process exited count: a worker
    shutting down may still serve for a moment.
    """
    assert stopped.proc is not None
    t0 = time.monotonic()
    stopped.proc.send_signal(sig)
    failed = 0
    statuses: Counter[str] = Counter()
    while time.monotonic() - t0 < 120:
        started = time.monotonic()
        exited = stopped.proc.poll() is not None
        if await exp.correct(survivor.port, statuses) and exited:
            elapsed = started - t0
            print(f"[failover] {label}: survivor answered every query correctly "
                  f"{elapsed:.1f} s after the signal ({failed} polls failed before; "
                  f"answers meanwhile: {dict(statuses)})")
            # while partitions move the survivor says so: 503 + Retry-After, never a 500
            assert set(statuses) <= {"200", "503+Retry-After"}, statuses
            return elapsed
        failed += 0 if not exited else 1
        assert survivor.proc is not None
        if survivor.proc.poll() is not None:
            raise AssertionError(
                f"{label}: the survivor exited with {survivor.proc.returncode}; its log "
                f"ends:\n{survivor.text()[-6000:]}")
        await asyncio.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
    raise AssertionError(f"{label}: survivor not correct 120 s after the stop; its log "
                         f"ends:\n{survivor.text()[-6000:]}")


async def test_two_workers_route_and_fail_over(migrated: Settings, tmp_path: Path) -> None:
    tag = "f" + uuid.uuid4().hex[:6]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    env_a = isolated_env(
        tmp_path / "a", COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
        COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5",
        COLLECTOR_WINDOWS__GRACE_SECONDS="600", COLLECTOR_INFLUX__DATABASE=f"{tag}db",
        # long enough to tell a clean leave (LeaveGroup) from a crash (session timeout)
        COLLECTOR_KAFKA__SESSION_TIMEOUT="20", COLLECTOR_KAFKA__HEARTBEAT_INTERVAL="2",
    )
    env_b = {**env_a, "COLLECTOR_WEB__PORT": str(free_port()),
             "COLLECTOR_APP__DATADIR": str(tmp_path / "b" / "faust")}
    settings = settings_for(env_a)
    now_ms = int(time.time() * 1000)
    users = [f"{tag}u{i}" for i in range(12)]
    users_map = profiles(tag, users)
    events = make_events(tag, users, settings.kafka.sources, now_ms - 120_000, 200, 110_000)
    await ensure_topics(settings)
    await seed_profiles(settings, users_map)
    await produce_events(settings, events)
    exp = Expectation(events, users_map, settings.kafka.sources, now_ms - 10 * MIN,
                      now_ms + MIN)

    a = Worker(env_a, tmp_path / "a.log").start()
    b = Worker(env_b, tmp_path / "b.log").start()
    try:
        await asyncio.to_thread(a.wait_ready, 90)
        await asyncio.to_thread(b.wait_ready, 90)
        await split_and_correct(exp, a, b)
        # SIGTERM first, in the group's first generations: the worker sends LeaveGroup,
        # so the survivor takes over without waiting for the session timeout
        term_s = await failover(exp, a, b, signal.SIGTERM, "SIGTERM")

        a.start()  # same group again: partitions split once more
        await asyncio.to_thread(a.wait_ready, 90)
        await split_and_correct(exp, a, b)
        kill_s = await failover(exp, b, a, signal.SIGKILL, "kill -9")
        session = settings.kafka.session_timeout
        print(f"[failover] summary: SIGTERM {term_s:.1f} s, kill -9 {kill_s:.1f} s "
              f"(session timeout {session:.0f} s)")
        # a crash is only noticed when the session times out (counted from the last
        # heartbeat, up to one interval before the kill); a clean stop is not
        beat = settings.kafka.heartbeat_interval
        assert term_s < session - beat <= kill_s < session + 60
    finally:
        a.stop()
        b.stop()


async def test_worker_beyond_the_partition_count_idles_but_answers(
    migrated: Settings, tmp_path: Path
) -> None:
    """One partition, two workers: one owns everything, the other routes every query."""
    tag = "i" + uuid.uuid4().hex[:6]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    env_a = isolated_env(
        tmp_path / "a", COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
        COLLECTOR_KAFKA__PARTITIONS="1", COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5",
        COLLECTOR_WINDOWS__GRACE_SECONDS="600", COLLECTOR_INFLUX__DATABASE=f"{tag}db",
    )
    env_b = {**env_a, "COLLECTOR_WEB__PORT": str(free_port()),
             "COLLECTOR_APP__DATADIR": str(tmp_path / "b" / "faust")}
    settings = settings_for(env_a)
    now_ms = int(time.time() * 1000)
    users_map = profiles(tag, [f"{tag}u{i}" for i in range(4)])
    events = make_events(tag, list(users_map), settings.kafka.sources, now_ms - 60_000, 40,
                         50_000)
    await ensure_topics(settings)
    await seed_profiles(settings, users_map)
    await produce_events(settings, events)
    exp = Expectation(events, users_map, settings.kafka.sources, now_ms - 10 * MIN,
                      now_ms + MIN)

    a = Worker(env_a, tmp_path / "a.log").start()
    b = Worker(env_b, tmp_path / "b.log").start()
    try:
        await asyncio.to_thread(a.wait_ready, 90)
        await asyncio.to_thread(b.wait_ready, 90)

        async def one_owner_both_correct() -> bool:
            owned = [await exp.owned_by(a.port), await exp.owned_by(b.port)]
            if sorted(map(len, owned)) != [0, len(users_map)]:
                return False
            return await exp.correct(a.port) and await exp.correct(b.port)

        await until(one_owner_both_correct, 120, "one owner, and both workers correct")
        assert await exp.correct(a.port) and await exp.correct(b.port)
    finally:
        a.stop()
        b.stop()
