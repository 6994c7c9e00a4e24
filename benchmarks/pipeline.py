"""Peers (plain Faust, Quix Streams) and pipeline (collector worker) runs over pre-loaded topics.

All are subprocess workers started after the topics are full.  Timing starts at the
first poll that sees an event processed and stops when the last one is processed (the
peers) or processed *and flushed* (the pipeline); polls are every ``POLL_S`` (the
pipeline's: ``RUN_POLL_S`` once events flow), so each bound is at most that late.  CPU
is utime+stime of the worker's threads from /proc/<pid>/stat over the same interval,
peak RSS is VmHWM from /proc/<pid>/status.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.common import (
    BIN,
    ProcSample,
    Subprocess,
    faust_worker,
    free_port,
    new_tag,
    proc_sample,
)
from collector.config import Settings
from collector.db.migrate import connect
from collector.enrichment.cache import ProfileCache
from collector.enrichment.users import UserRepository

POLL_S = 0.05
RUN_POLL_S = 0.5
_SAMPLE = re.compile(r"^(collector_[a-z_]+?)(?:_total)?(?:\{([^}]*)\})? ([0-9.eE+-]+)$")


@dataclass(frozen=True)
class Mark:
    at: float
    proc: ProcSample


def mark(pid: int) -> Mark:
    return Mark(time.perf_counter(), proc_sample(pid))


def parse_metrics(text: str) -> dict[str, float]:
    """Sum every collector counter by name, and by name plus ``sink`` (or ``trigger``)
    label."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or line.startswith("#"):
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name.endswith("_created"):
            continue
        totals[name] = totals.get(name, 0.0) + value
        by = re.search(r'(?:sink|trigger)="([^"]+)"', labels)
        if by:
            key = f"{name}:{by.group(1)}"
            totals[key] = totals.get(key, 0.0) + value
    return totals


def rates(events: int, start: Mark, end: Mark) -> dict[str, Any]:
    elapsed = max(end.at - start.at, 1e-9)
    return {
        "events": events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed, 1),
        "cpu_us_per_event": round((end.proc.cpu_s - start.proc.cpu_s) / events * 1e6, 2),
        "cpu_share": round((end.proc.cpu_s - start.proc.cpu_s) / elapsed, 2),
        "peak_rss_mb": round(end.proc.hwm_kb / 1024, 1),
    }


async def wait_for(check: Any, limit_s: float, what: str, worker: Subprocess) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        worker.check_alive()
        if await check():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"timed out after {limit_s}s waiting for {what}:\n{worker.tail()}")


# ---------------------------------------------------------------- peers (Faust, Quix)

def read_status(status: Path) -> dict[str, Any]:
    """A peer's progress file (zeros until it has written one)."""
    try:
        data: dict[str, Any] = orjson.loads(status.read_bytes())
        return data
    except (OSError, orjson.JSONDecodeError):
        return {"messages": 0, "events": 0, "windowed": 0}


async def time_peer(worker: Subprocess, status: Path, events: int,
                    done: Callable[[dict[str, Any]], bool], name: str,
                    limit_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """From the first poll that sees a message decoded to the first poll where ``done``.

    Returns the rates and the last status read.  ``first_message_s`` is how long after
    the process started that first poll was (start-up, topic creation, rebalance,
    recovery: not in the timings).
    """
    deadline = time.monotonic() + limit_s
    first: Mark | None = None
    first_message_s = 0.0
    try:
        while time.monotonic() < deadline:
            worker.check_alive()
            seen = read_status(status)
            if first is None and seen["messages"] > 0:
                first = mark(worker.pid)
                first_message_s = time.monotonic() - worker.started_at
            if done(seen):
                assert first is not None
                result = rates(events, first, mark(worker.pid))
                result["counted_events"] = seen["events"]
                result["first_message_s"] = round(first_message_s, 2)
                return result, seen
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"{name}: {read_status(status)}, expected {events} events:\n"
                           f"{worker.tail()}")
    finally:
        worker.stop()


async def run_reference(settings: Settings, messages: int, events: int, workdir: Path,
                        limit_s: float = 900.0) -> dict[str, Any]:
    status = workdir / "reference-status.json"
    env = {
        # under the run's tag, so that the run's cleanup finds its topics
        "BENCH_REF_ID": f"{settings.app.id}-ref",
        "BENCH_REF_BROKER": ";".join(f"kafka://{s}" for s in settings.kafka.bootstrap_servers),
        "BENCH_REF_TOPICS": ",".join(settings.kafka.raw_topics),
        "BENCH_REF_PREFIX": settings.kafka.raw_topic_prefix,
        "BENCH_REF_DATADIR": str(workdir / "reference-data"),
        "BENCH_REF_PORT": str(free_port()),
        "BENCH_REF_PARTITIONS": str(settings.kafka.partitions),
        "BENCH_REF_STATUS": str(status),
    }
    worker = faust_worker("benchmarks.reference_app", env, workdir / "reference.log").start()
    result, _ = await time_peer(worker, status, events, lambda s: s["messages"] >= messages,
                                "reference", limit_s)
    return result


async def run_quix(settings: Settings, messages: int, events: int, workdir: Path,
                   groupby: str = "repartition", limit_s: float = 900.0) -> dict[str, Any]:
    """The Quix Streams peer (``benchmarks/quix_app.py``) over the same raw topics.

    Done when every message has been decoded and every event decoded from them has
    reached the window (after the repartition round trip, with ``groupby="repartition"``).
    """
    status = workdir / "quix-status.json"
    env = {
        "BENCH_QUIX_ID": new_tag("quix"),
        "BENCH_QUIX_BROKER": ",".join(settings.kafka.bootstrap_servers),
        "BENCH_QUIX_TOPICS": ",".join(settings.kafka.raw_topics),
        "BENCH_QUIX_PREFIX": settings.kafka.raw_topic_prefix,
        "BENCH_QUIX_DATADIR": str(workdir / "quix-data"),
        "BENCH_QUIX_GROUPBY": groupby,
        "BENCH_QUIX_STATUS": str(status),
    }
    worker = Subprocess([str(BIN / "python"), "-m", "benchmarks.quix_app"], env,
                        workdir / "quix.log").start()

    def done(seen: dict[str, Any]) -> bool:
        return bool(seen["messages"] >= messages and seen["windowed"] >= seen["events"])

    result, seen = await time_peer(worker, status, events, done, "quix", limit_s)
    result["groupby"] = groupby
    result["windowed_events"] = seen["windowed"]
    result["retention_ms_config"] = seen.get("retention", {})
    return result


# ---------------------------------------------------------------- pipeline (collector)

async def warm_cache(settings: Settings, users: int) -> int:
    """Pre-fill the run's Redis prefix with every seeded profile (a warm cache)."""
    repo, cache = UserRepository(settings.mysql), ProfileCache(settings.redis)
    await repo.start()
    await cache.start()
    try:
        ids = [f"u{i:05d}" for i in range(users)]
        versions = await cache.versions(ids)  # read before MySQL, as the enricher does
        profiles = await repo.get_many(ids)
        cached = 0
        for start in range(0, len(ids), 2000):
            chunk = {uid: profiles.get(uid) for uid in ids[start:start + 2000]}
            cached += await cache.put_many(chunk, versions)
        return cached
    finally:
        await cache.close()
        await repo.close()


async def influx_create_db(settings: Settings) -> None:
    data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{settings.influx.database}"'})
    async with aiohttp.ClientSession() as session, session.post(
        f"{settings.influx.url}/query", data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"influx CREATE DATABASE: {resp.status} {await resp.text()}")


async def event_stats_count(settings: Settings) -> int:
    """Events visible in MySQL ``event_stats`` (tumbling rows) for this run's sources."""
    sources = list(settings.kafka.sources)
    marks = ",".join(["%s"] * len(sources))
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(
            f"SELECT COALESCE(SUM(count), 0) FROM event_stats "
            f"WHERE window_seconds = %s AND source IN ({marks})",
            [settings.windows.tumbling_seconds, *sources],
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


class PipelineWorker:
    """A running collector worker and a /metrics reader for it."""

    def __init__(self, settings: Settings, env: dict[str, str], log: Path) -> None:
        self.settings = settings
        self.worker = faust_worker("collector", env, log)
        self.url = f"http://127.0.0.1:{settings.web.port}/metrics"
        self._session: aiohttp.ClientSession | None = None

    async def start(self, limit_s: float = 180.0) -> float:
        self.worker.start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

        async def ready() -> bool:
            return "Ready" in self.worker.tail(200_000)

        await wait_for(ready, limit_s, "worker ready", self.worker)
        return time.monotonic() - self.worker.started_at

    async def metrics(self) -> dict[str, float]:
        assert self._session is not None
        try:
            async with self._session.get(self.url) as resp:
                return parse_metrics(await resp.text())
        except (aiohttp.ClientError, TimeoutError):
            return {}

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.worker.stop()

    def sink_rows(self, m: dict[str, float]) -> tuple[float, ...]:
        return tuple(v for k, v in sorted(m.items())
                     if k.startswith("collector_sink_rows_written:"))

    async def measure(self, events: int, valid: int, dead: int,
                      limit_s: float = 1800.0, stall_s: float = 60.0) -> dict[str, Any]:
        """From the first event consumed until every event is consumed and flushed.

        Flushed: this run's ``event_stats`` rows in MySQL add up to every event that
        entered the windows (consumed - dead-lettered, so events dead-lettered as late
        count as done) and the sinks' written-row counters stopped moving for two flush
        intervals (+1 s); the end is the last poll at which a counter moved (or MySQL
        became complete).  If nothing moves for ``stall_s`` after everything was consumed
        the run ends as ``complete: false`` instead of waiting for ``limit_s``.

        ``flush_tail_s``: from the poll that saw the last event consumed to the last poll
        at which MySQL moved (this run's ``event_stats`` sum, or the mysql sink's
        written-rows counter), i.e. the last row landing in MySQL; 0 if MySQL was
        already complete at the first poll.  Both ends are polls, ``RUN_POLL_S`` apart.
        """
        pid = self.worker.pid
        settle = 2 * self.settings.windows.flush_interval_seconds + 1.0
        deadline = time.monotonic() + limit_s
        first = consumed_at = None
        last_rows: tuple[float, ...] = ()
        last_change: Mark | None = None
        mysql_rows = 0.0
        mysql_last: Mark | None = None  # the last poll at which MySQL moved, once consumed
        mysql_done = False
        visible = last_visible = 0
        m: dict[str, float] = {}
        complete = True
        while time.monotonic() < deadline:
            self.worker.check_alive()
            m = await self.metrics()
            now = mark(pid)
            consumed = m.get("collector_events_consumed", 0.0)
            if first is None and consumed > 0:
                first = now
            if consumed_at is None and consumed >= events:
                consumed_at = now
            rows = self.sink_rows(m)
            if rows != last_rows:
                last_rows, last_change = rows, now
            mysql_now = m.get("collector_sink_rows_written:mysql", 0.0)
            if mysql_now != mysql_rows:
                mysql_rows = mysql_now
                if consumed_at is not None:
                    mysql_last = now
            if consumed_at is not None:
                windowed = consumed - m.get("collector_events_dead_lettered", 0.0)
                if not mysql_done:
                    visible = await event_stats_count(self.settings)
                    if visible != last_visible:
                        last_visible, last_change = visible, now
                    if visible >= windowed:
                        mysql_done = True
                        last_change = mysql_last = now  # the latest mark so far
                quiet = time.perf_counter() - (last_change or consumed_at).at
                if mysql_done and quiet >= settle:
                    break
                if quiet >= max(stall_s, settle):
                    complete = False
                    break
            # /metrics exposition costs the worker CPU (about 9% at 20 scrapes/s, measured
            # with py-spy), so scrape fast only until the first event, then every 0.5 s
            await asyncio.sleep(POLL_S if first is None else RUN_POLL_S)
        else:
            raise RuntimeError(f"pipeline: not done after {limit_s}s; metrics {m}\n"
                               f"{self.worker.tail()}")
        assert first is not None and consumed_at is not None
        result = rates(events, first, last_change or consumed_at)
        result["complete"] = complete
        result["consume_only"] = rates(events, first, consumed_at)
        tail = (mysql_last.at - consumed_at.at) if mysql_last is not None else 0.0
        result["flush_tail_s"] = round(max(tail, 0.0), 2)
        result["flush_interval_s"] = self.settings.windows.flush_interval_seconds
        dead_now = m.get("collector_events_dead_lettered", 0.0)
        result["counters"] = {
            "consumed": m.get("collector_events_consumed"),
            "valid": m.get("collector_events_valid"),
            "dead_lettered": dead_now,
            "expected_valid": valid,
            "expected_dead_lettered": dead,
            "unexpected_dead_letters": dead_now - dead,
            "event_stats_visible": visible,
            "sink_rows": {k.split(":", 1)[1]: v for k, v in m.items()
                          if k.startswith("collector_sink_rows_written:")},
            "sink_failed": m.get("collector_sink_rows_failed", 0.0),
            "flushes": {k.split(":", 1)[1]: v for k, v in m.items()
                        if k.startswith("collector_window_flushes:")},
        }
        return result
