"""Robustness of the windows and sinks with real workers: replay, sink outages, restart
recovery and crashes.

* replay: a second app (new consumer group, fresh tables) re-reads the raw topics from
  the start into the same sinks and changes nothing, not even ``updated_at``;
* sink outage: MariaDB, then InfluxDB (throwaway servers) die mid-stream; health shows
  it, and after the restart every row equals the oracle (catch-up time printed);
* recovery: SIGTERM and restart with open windows, rocksdb and memory stores; the
  restarted worker re-flushes exactly what it had, and later events add up exactly;
* crash: ``kill -9`` mid-stream; no window is missing or short, over-counts printed.

Expected values come from ``tests.oracle``.  Printed measurements start with ``[robust]``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from collector.config import Settings
from collector.db import connect, migrate
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.sinks_io import Ident, influx_create_db, influx_query, mysql_rows
from tests.e2e.test_windows_e2e import golden_input, seed_users, window_env
from tests.e2e.workers import Worker, free_port, isolated_env
from tests.integration.servers import InfluxDBServer, MariaDBServer, binary
from tests.oracle import oracle

pytestmark = pytest.mark.e2e

Expected = dict[Ident, dict[str, Any]]
VALUES = (1.5, 2.0, 7.25, 10.0)  # binary fractions: sums are exact in any order
TYPES = ("click", "view", "buy")
#: small windows for the streaming tests: 1 s tumbling, 2 s hopping by 1 s, 1 s grace
SMALL = {"tumbling_ms": 1000, "hop_size_ms": 2000, "hop_step_ms": 1000}
SMALL_ENV = {
    "COLLECTOR_WINDOWS__TUMBLING_SECONDS": "1",
    "COLLECTOR_WINDOWS__HOPPING_SIZE_SECONDS": "2",
    "COLLECTOR_WINDOWS__HOPPING_STEP_SECONDS": "1",
    "COLLECTOR_WINDOWS__GRACE_SECONDS": "1",
    "COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS": "2",
    "COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS": "0.5",
}


def report(text: str) -> None:
    print(f"\n[robust] {text}", flush=True)


# ---------------------------------------------------------------- worker probes


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=3)
    ) as resp:
        return resp.status, await resp.text()


async def readyz(worker: Worker) -> dict[str, Any]:
    _, body = await http_get(worker.port, "/readyz")
    result: dict[str, Any] = orjson.loads(body)
    return result


def metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` (None: no sample)."""
    total: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, rest = series.partition("{")
        if metric_name != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(value)
    return total


async def metrics(worker: Worker) -> str:
    status, body = await http_get(worker.port, "/metrics")
    assert status == 200, body
    return body


async def until(
    check: Callable[[], Awaitable[tuple[bool, Any]]], limit_s: float, what: str,
    interval: float = 0.25,
) -> Any:
    """Poll ``check`` (-> ok, detail) until ok; fail with the last detail."""
    deadline = time.monotonic() + limit_s
    detail: Any = None
    while True:
        try:
            ok, detail = await check()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:  # worker not serving yet
            ok, detail = False, repr(exc)
        if ok:
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}; last: "
                                 f"{str(detail)[:3000]}")
        await asyncio.sleep(interval)


async def start(worker: Worker) -> Worker:
    worker.start()
    await asyncio.to_thread(worker.wait_ready, 90.0)
    return worker


# ---------------------------------------------------------------- events and oracle


def body(event: dict[str, Any]) -> bytes:
    return orjson.dumps({k: event[k] for k in ("event_id", "user_id", "type", "ts", "value")
                         if k in event})


def new_event(rng: random.Random, tag: str, n: int, user: str, source: str,
              ts: int) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"{tag}-{n}", "user_id": user,
                             "type": rng.choice(TYPES), "ts": ts, "source": source}
    if rng.random() < 0.6:
        event["value"] = rng.choice(VALUES)
    return event


def expect(events: list[dict[str, Any]], segments: dict[str, tuple[str, str]], *,
           tumbling_ms: int = 60_000, hop_size_ms: int = 300_000,
           hop_step_ms: int = 60_000) -> Expected:
    for e in events:
        e["segment"], e["country"] = segments[e["user_id"]]
    return oracle(events, tumbling_ms=tumbling_ms, hop_size_ms=hop_size_ms,
                  hop_step_ms=hop_step_ms)


async def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    for source in settings.kafka.sources:
        batch = [(e["user_id"].encode(), body(e)) for e in events if e["source"] == source]
        if batch:
            await produce(settings, settings.kafka.raw_topic(source), batch)


async def stream(
    settings: Settings, tag: str, users: list[str], *, batches: int, pace_s: float,
    rng: random.Random, first_id: int = 0,
    after_batch: Callable[[int], Awaitable[None]] | None = None,
    per_batch: int | None = None,
) -> list[dict[str, Any]]:
    """Every ``pace_s``: one event per user and source, event time now - [0, 300) ms;
    or, with ``per_batch``, the next ``per_batch`` of those (user, source) pairs in
    turn, so that many users stay active at a bounded event rate."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5)
    await producer.start()
    events: list[dict[str, Any]] = []
    pairs = [(u, s) for u in users for s in settings.kafka.sources]
    size = len(pairs) if per_batch is None else min(per_batch, len(pairs))
    begin = time.monotonic()
    try:
        for i in range(batches):
            now_ms = int(time.time() * 1000)
            turn = [pairs[(i * size + j) % len(pairs)] for j in range(size)]
            batch = [new_event(rng, tag, first_id + len(events) + j, user, source,
                               now_ms - rng.randrange(300))
                     for j, (user, source) in enumerate(turn)]
            events.extend(batch)
            futures = [await producer.send(settings.kafka.raw_topic(e["source"]), body(e),
                                           key=e["user_id"].encode()) for e in batch]
            await asyncio.gather(*futures)
            if after_batch is not None:
                await after_batch(i)
            await asyncio.sleep(max(0.0, begin + (i + 1) * pace_s - time.monotonic()))
    finally:
        await producer.stop()
    return events


# ---------------------------------------------------------------- sink read-back


def keys_for(tag: str) -> dict[str, str]:
    return {"event_stats": tag, "user_activity": tag, "segment_stats": tag}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def row_problems(
    rows: dict[Ident, tuple[dict[str, Any], bool]], expected: Expected, final: bool | None,
) -> list[str]:
    """What differs between MySQL rows and the oracle (empty: equal)."""
    problems = [f"missing {i}" for i in sorted(expected.keys() - rows.keys())]
    problems += [f"unexpected {i}" for i in sorted(rows.keys() - expected.keys())]
    for ident in sorted(expected.keys() & rows.keys()):
        got, is_final = rows[ident]
        want = expected[ident]
        if not all(_same(got[k], want[k]) for k in want):
            problems.append(f"{ident}: got {got}, want {want}")
        elif final is not None and is_final != final:
            problems.append(f"{ident}: final={is_final}, want {final}")
    return problems


async def mysql_check(settings: Settings, tag: str, expected: Expected, lo: int, hi: int,
                      final: bool | None = True) -> tuple[bool, Any]:
    rows = await mysql_rows(settings, lo, hi, keys_for(tag))
    problems = row_problems(rows, expected, final)
    return not problems, problems[:10] if problems else rows


async def influx_points(settings: Settings) -> dict[Ident, dict[str, Any]]:
    """InfluxDB points in the oracle's shape (window seconds from the expected idents)."""
    out: dict[Ident, dict[str, Any]] = {}
    for p in await influx_query(settings, "SELECT * FROM event_stats"):
        out[("event_stats", p["time"], 0, (p["source"], p["type"]))] = {
            "count": p["count"], "value_count": p["value_count"], "value_sum": p["sum"],
            "value_min": p.get("min"), "value_max": p.get("max"), "final": p["final"]}
    for p in await influx_query(settings, "SELECT * FROM segment_stats"):
        out[("segment_stats", p["time"], 0, (p["segment"], p["country"]))] = {
            "count": p["count"], "value_sum": p["sum"], "final": p["final"]}
    return out


async def influx_check(settings: Settings, expected: Expected) -> tuple[bool, Any]:
    want = {(t, ws, 0, key): v for (t, ws, _, key), v in expected.items()
            if t != "user_activity"}
    got = await influx_points(settings)
    problems = [f"missing {i}" for i in sorted(want.keys() - got.keys())]
    problems += [f"unexpected {i}" for i in sorted(got.keys() - want.keys())]
    for ident in sorted(want.keys() & got.keys()):
        g, w = got[ident], want[ident]
        if not all(_same(g[k], w[k]) for k in w) or g["final"] is not True:
            problems.append(f"{ident}: got {g}, want {w} final")
    return not problems, problems[:10]


async def mysql_dump(settings: Settings, tag: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every column (updated_at too) of the rows of ``tag``, in primary key order."""
    queries = {
        "event_stats": "SELECT * FROM event_stats WHERE source LIKE %s ORDER BY 1, 2, 3, 4",
        "user_activity": "SELECT * FROM user_activity WHERE user_id LIKE %s ORDER BY 1, 2, 3",
        "segment_stats": "SELECT * FROM segment_stats WHERE segment LIKE %s "
                         "ORDER BY 1, 2, 3, 4",
    }
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for table, sql in queries.items():
            await cur.execute(sql, (tag + "%",))
            out[table] = [tuple(row) for row in await cur.fetchall()]
    return out


async def influx_dump(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    return {m: sorted(await influx_query(settings, f"SELECT * FROM {m}"),
                      key=lambda p: orjson.dumps(p, option=orjson.OPT_SORT_KEYS))
            for m in ("event_stats", "segment_stats")}


def dump_diff(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> list[str]:
    out = []
    for table in before.keys() | after.keys():
        old, new = before.get(table, []), after.get(table, [])
        if old != new:
            gone = [r for r in old if r not in new][:3]
            came = [r for r in new if r not in old][:3]
            out.append(f"{table}: {len(old)} -> {len(new)} rows; before {gone} after {came}")
    return out


# ---------------------------------------------------------------- 1. replay


async def test_replay_by_a_new_app_changes_no_row(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "r" + uuid.uuid4().hex[:8]
    env = window_env(tmp_path, tag)
    settings = settings_for(env)
    await ensure_topics(settings)
    await influx_create_db(settings)
    segments = {f"{tag}u{i}": (f"{tag}s{i % 3}", ["DE", "FR"][i % 2]) for i in range(8)}
    await seed_users(settings, segments)
    first = await start(worker_factory(env, "first"))

    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // 60_000 * 60_000
    normal, late = golden_input(tag, t0)
    sources = settings.kafka.sources
    for i, event in enumerate(normal):
        event["source"] = sources[i % 2]
    for event in late:
        event["source"] = sources[0]
    await produce_events(settings, normal)
    await read_until(settings, [settings.kafka.enriched_topic],
                     lambda recs: len(recs) >= len(normal), limit_s=60)
    await produce_events(settings, late)  # after the rest: they meet a watermark

    expected = expect(normal, segments)
    lo, hi = t0 - 10 * 60_000, t0 + 10 * 60_000
    await until(lambda: mysql_check(settings, tag, expected, lo, hi), 60, "final rows")
    await until(lambda: influx_check(settings, expected), 30, "final points")
    assert first.stop() == 0
    before_sql, before_influx = await mysql_dump(settings, tag), await influx_dump(settings)

    # What must differ for a second app on the same input and sinks: the app id (consumer
    # group and changelog topics), the state directory (rocksdb), the web port (both may
    # run) and the partials topic (each app's merge must read only its own partials and
    # close marks).  Enriched and dead-letter topics may be shared (they get duplicates).
    replay_env = {
        **env,
        "COLLECTOR_APP__ID": env["COLLECTOR_APP__ID"] + "-replay",
        "COLLECTOR_APP__DATADIR": str(tmp_path / "faust-replay"),
        "COLLECTOR_WEB__PORT": str(free_port()),
        "COLLECTOR_KAFKA__PARTIALS_TOPIC": env["COLLECTOR_KAFKA__PARTIALS_TOPIC"] + "-replay",
    }
    await ensure_topics(settings_for(replay_env))
    began = time.monotonic()
    second = await start(worker_factory(replay_env, "replay"))
    n_merged = len([i for i in expected if i[0] != "user_activity"])

    async def replayed() -> tuple[bool, Any]:
        text = await metrics(second)
        state = (metric(text, "collector_events_consumed_total"),
                 metric(text, "collector_window_closes_total", table="merged"),
                 metric(text, "collector_sink_rows_written_total", sink="mysql"))
        pending = {name: s["pending"] for name, s in (await readyz(second))["sinks"].items()}
        done = (state[0] == len(normal) + len(late) and (state[1] or 0) >= n_merged
                and (state[2] or 0) >= len(expected) and not any(pending.values()))
        return done, (state, pending)

    state = await until(replayed, 60, "the replay to consume, close and write everything")
    report(f"replay: second app consumed, closed and rewrote {int(state[0][2])} rows in "
           f"{time.monotonic() - began:.1f}s (worker start included)")
    after_sql, after_influx = await mysql_dump(settings, tag), await influx_dump(settings)
    assert sum(map(len, before_sql.values())) == len(expected)
    assert not dump_diff(before_sql, after_sql), dump_diff(before_sql, after_sql)
    assert not dump_diff(before_influx, after_influx), dump_diff(before_influx, after_influx)


# ---------------------------------------------------------------- 2. sink outages


@pytest.fixture
def own_sinks(tmp_path: Path) -> Any:
    if binary("mariadbd") is None or binary("influxd") is None:
        pytest.skip("mariadb-server and influxd are needed")
    mariadb = MariaDBServer(tmp_path / "mariadb")
    influxd = InfluxDBServer(tmp_path / "influxd")
    try:
        mariadb.init()
        influxd.start()
        yield mariadb, influxd
    finally:
        mariadb.kill()
        influxd.kill()


class HealthWatch:
    """Polls /readyz and /metrics; remembers whether each sink was seen unhealthy."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.seen: dict[str, dict[str, Any]] = {}
        self.task: asyncio.Task[None] | None = None

    async def sample(self) -> dict[str, tuple[bool, float | None]]:
        sinks = (await readyz(self.worker))["sinks"]
        text = await metrics(self.worker)
        out = {}
        for name, health in sinks.items():
            gauge = metric(text, "collector_sink_healthy", sink=name)
            out[name] = (health["healthy"], gauge)
            if not health["healthy"] and gauge == 0.0 and name not in self.seen:
                self.seen[name] = health
        return out

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except (OSError, aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)

    def __enter__(self) -> HealthWatch:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()

    async def was_unhealthy(self, name: str) -> tuple[bool, Any]:
        return name in self.seen, self.seen

    async def healthy(self, name: str) -> tuple[bool, Any]:
        sample = await self.sample()
        return sample[name] == (True, 1.0), sample


async def test_sink_outages_catch_up(
    stack: Settings, own_sinks: tuple[MariaDBServer, InfluxDBServer],
    worker_factory: Callable[..., Worker], tmp_path: Path,
) -> None:
    mariadb, influxd = own_sinks
    tag = "o" + uuid.uuid4().hex[:8]
    env = isolated_env(
        tmp_path, **SMALL_ENV,
        COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
        COLLECTOR_MYSQL__DSN=mariadb.dsn, COLLECTOR_MYSQL__TIMEOUT="0.5",
        COLLECTOR_INFLUX__URL=influxd.url, COLLECTOR_INFLUX__DATABASE=influxd.database,
        COLLECTOR_INFLUX__TIMEOUT="1",
    )
    settings = settings_for(env)
    await migrate(settings)
    await ensure_topics(settings)
    users = [f"{tag}u{i}" for i in range(8)]
    segments = {u: (f"{tag}s{i % 3}", ["DE", "FR"][i % 2]) for i, u in enumerate(users)}
    await seed_users(settings, segments)  # cached in Redis by the first batch
    worker = await start(worker_factory(env))
    rng = random.Random(5)
    lo = int(time.time() * 1000) - 60_000

    async def kill_at(i: int, server: MariaDBServer | InfluxDBServer) -> None:
        if i == 4:
            await asyncio.to_thread(server.kill)

    # -- MariaDB dies after batch 4 of 20 and stays down until the stream ended
    with HealthWatch(worker) as watch:
        events = await stream(settings, tag, users, batches=20, pace_s=0.5, rng=rng,
                              after_batch=lambda i: kill_at(i, mariadb))
        hi = int(time.time() * 1000) + 60_000
        expected = expect(events, segments, **SMALL)
        began = time.monotonic()
        await until(lambda: influx_check(settings, expected), 30, "influx during mysql outage")
        influx_lag = time.monotonic() - began
        await until(lambda: watch.was_unhealthy("mysql"), 10, "mysql seen unhealthy")

    assert (await watch.sample())["mysql"] == (False, 0.0)
    assert watch.seen["mysql"]["last_error"] and watch.seen["mysql"]["pending"] > 0
    restarted = time.monotonic()
    await asyncio.to_thread(mariadb.start)
    up = time.monotonic()
    await until(lambda: mysql_check(settings, tag, expected, lo, hi), 60, "mysql catch-up",
                interval=0.1)
    caught_up = time.monotonic()
    await until(lambda: watch.healthy("mysql"), 15, "mysql healthy again")
    report(f"mysql outage: {len(events)} events; influx complete {influx_lag:.1f}s after the "
           f"stream; mariadbd restart {up - restarted:.2f}s, restart -> rows equal oracle "
           f"{caught_up - restarted:.2f}s (server up -> rows {caught_up - up:.2f}s)")

    # -- then InfluxDB dies after batch 4 of a second stream
    with HealthWatch(worker) as watch:
        more = await stream(settings, tag, users, batches=20, pace_s=0.5, rng=rng,
                            first_id=len(events), after_batch=lambda i: kill_at(i, influxd))
        hi = int(time.time() * 1000) + 60_000
        expected = expect(events + more, segments, **SMALL)
        began = time.monotonic()
        await until(lambda: mysql_check(settings, tag, expected, lo, hi), 30,
                    "mysql during influx outage")
        mysql_lag = time.monotonic() - began
        await until(lambda: watch.was_unhealthy("influxdb"), 10, "influx seen unhealthy")

    assert (await watch.sample())["influxdb"] == (False, 0.0)
    restarted = time.monotonic()
    await asyncio.to_thread(influxd.start)
    up = time.monotonic()
    await until(lambda: influx_check(settings, expected), 60, "influx catch-up", interval=0.1)
    caught_up = time.monotonic()
    await until(lambda: watch.healthy("influxdb"), 15, "influx healthy again")
    report(f"influx outage: {len(more)} events; mysql complete {mysql_lag:.1f}s after the "
           f"stream; influxd restart {up - restarted:.2f}s, restart -> points equal oracle "
           f"{caught_up - restarted:.2f}s (server up -> points {caught_up - up:.2f}s)")
    assert (await readyz(worker))["ready"] is True


# ---------------------------------------------------------------- 3. recovery


def open_window_events(rng: random.Random, tag: str, users: list[str], sources: list[str],
                       t0: int, first: int, n: int) -> list[dict[str, Any]]:
    """Event times t0 + [0, 90) s: with 60 s windows and 60 s grace nothing closes."""
    return [new_event(rng, tag, i, rng.choice(users), sources[i % 2],
                      t0 + 5_000 + i * 250 + rng.randrange(-5_000, 5_000))
            for i in range(first, first + n)]


def state_keys(records: list[Any], users: dict[str, tuple[str, str]]) -> int:
    """How many keys the combiner table holds for these raw records (see aggregator.py)."""
    keys: set[tuple[Any, ...]] = set()
    for r in records:
        e = orjson.loads(r.value)
        source = r.topic.rsplit(".", 1)[1]
        ws = e["ts"] - e["ts"] % 60_000
        keys.add(("s", r.topic, r.partition))
        keys.add(("p", "event_stats", r.topic, r.partition, source, e["type"], ws))
        keys.add(("u", e["user_id"], ws))
        keys.add(("g", "user_sessions", e["user_id"]))  # one session entry per user
        newest = e["ts"] - e["ts"] % 60_000
        for start in range(newest - 240_000, newest + 1, 60_000):
            keys.add(("p", "segment_stats", r.topic, r.partition, *users[e["user_id"]], start))
    return len(keys)


def reindexed(worker: Worker) -> list[int]:
    return [int(n) for n in re.findall(r"re-indexed (\d+) state keys", worker.text())]


def recovery_log(worker: Worker) -> str:
    lines = worker.text().splitlines()
    keep = [i for i, line in enumerate(lines) if "Highwater" in line or "offsets at start"
            in line or "re-indexed" in line]
    return "\n".join("\n".join(lines[i:i + 8]) for i in keep)


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
async def test_restart_recovers_open_windows(
    store: str, migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = store[0] + uuid.uuid4().hex[:8]
    # sessions entries written on every flush: with the default 60 s a pane waits, the
    # first worker may stop before its users' entries exist (recovery re-sends every
    # user window, so they are rebuilt), and state_keys counts one entry per user
    env = {**window_env(tmp_path, tag), "COLLECTOR_APP__STORE": store,
           "COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS": "3600",
           "COLLECTOR_WINDOWS__SESSION_UPDATE_SECONDS": "0"}
    settings = settings_for(env)
    await ensure_topics(settings)
    await influx_create_db(settings)
    users = [f"{tag}u{i}" for i in range(8)]
    segments = {u: (f"{tag}s{i % 3}", ["DE", "FR"][i % 2]) for i, u in enumerate(users)}
    await seed_users(settings, segments)
    rng = random.Random(7)
    t0 = (int(time.time() * 1000) - 2 * 3_600_000) // 60_000 * 60_000
    lo, hi = t0 - 10 * 60_000, t0 + 10 * 60_000
    sources = settings.kafka.sources

    first = await start(worker_factory(env, "first"))
    part1 = open_window_events(rng, tag, users, sources, t0, 0, 160)
    await produce_events(settings, part1)
    want1 = expect(part1, segments)
    await until(lambda: mysql_check(settings, tag, want1, lo, hi, final=False), 60,
                "running rows of part 1")
    await until(lambda: _quiet(first), 10, "sinks quiet")
    before = await mysql_dump(settings, tag)
    raw = await read_until(settings, settings.kafka.raw_topics,
                           lambda recs: len(recs) >= len(part1), limit_s=30)
    n_keys = state_keys(raw, segments)
    assert first.stop() == 0

    second = await start(worker_factory(env, "second"))
    n_rows = sum(map(len, before.values()))

    async def reflushed() -> tuple[bool, Any]:
        written = metric(await metrics(second), "collector_sink_rows_written_total",
                         sink="mysql")
        quiet, pending = await _quiet(second)
        return (written or 0) >= n_rows and quiet, (written, pending, reindexed(second))

    await until(reflushed, 20, f"the restarted worker to re-flush {n_rows} rows")
    after = await mysql_dump(settings, tag)
    corrected = len(re.findall(r"high watermark of .* is \d+, broker reported", second.text()))
    report(f"recovery ({store}): {n_keys} state keys expected, re-indexed "
           f"{reindexed(second)}; {n_rows} rows re-flushed, "
           f"{'identical' if after == before else 'CHANGED'}; {corrected} of 8 changelog "
           f"high watermarks corrected upwards from ListOffsets")
    evidence = recovery_log(second)
    assert reindexed(second) and set(reindexed(second)) == {n_keys}, evidence
    assert not dump_diff(before, after), (dump_diff(before, after), evidence)

    part2 = open_window_events(rng, tag, users, sources, t0, 160, 160)
    await produce_events(settings, part2)
    want = expect(part1 + part2, segments)
    await until(lambda: mysql_check(settings, tag, want, lo, hi, final=False), 60,
                "running rows of part 1 + part 2")
    assert second.stop() == 0

    # a third start with a short idle timeout closes every window: final rows exact
    closing = {**env, "COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS": "2"}
    third = await start(worker_factory(closing, "third"))
    await until(lambda: mysql_check(settings, tag, want, lo, hi, final=True), 60,
                "final rows of part 1 + part 2")
    await until(lambda: influx_check(settings, want), 30, "final points")
    assert third.stop() == 0


async def _quiet(worker: Worker) -> tuple[bool, Any]:
    pending = {n: s["pending"] for n, s in (await readyz(worker))["sinks"].items()}
    return not any(pending.values()), pending


# ---------------------------------------------------------------- 4. crash


def over_counts(rows: dict[Ident, tuple[dict[str, Any], bool]], expected: Expected,
                ) -> tuple[dict[str, int], list[str]]:
    """Per table, the sum of (stored count - oracle count); and rows that are wrong beyond
    a repeated event (missing, not final, short, or differing in more than the sums)."""
    over = {"event_stats": 0, "user_activity": 0, "segment_stats": 0}
    wrong = [f"missing {i}" for i in sorted(expected.keys() - rows.keys())]
    wrong += [f"unexpected {i}" for i in sorted(rows.keys() - expected.keys())]
    for ident in sorted(expected.keys() & rows.keys()):
        (got, final), want = rows[ident], expected[ident]
        over[ident[0]] += got["count"] - want["count"]
        same = {k: v for k, v in want.items() if k not in ("count", "value_count", "value_sum")}
        if not final or got["count"] < want["count"] or not all(
            _same(got[k], v) for k, v in same.items()
        ) or got.get("value_sum", 0.0) < want.get("value_sum", 0.0) - 1e-9:
            wrong.append(f"{ident}: final={final} got {got}, want {want}")
    return over, wrong


async def prepare_stream(settings: Settings, tag: str, user_count: int
                         ) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Topics, the Influx database and ``user_count`` seeded users for :func:`stream`."""
    await ensure_topics(settings)
    await influx_create_db(settings)
    users = [f"{tag}u{i}" for i in range(user_count)]
    segments = {u: (f"{tag}s{i % 3}", ["DE", "FR"][i % 2]) for i, u in enumerate(users)}
    await seed_users(settings, segments)
    return users, segments


async def crash_run(
    tmp_path: Path, worker_factory: Callable[..., Worker], settings_env: dict[str, str],
    *, kill_after: int = 7, batches: int = 20, pace_s: float = 0.3,
) -> tuple[dict[str, int], list[str], dict[str, Any]]:
    """Stream, ``kill -9`` the worker after batch ``kill_after`` and start it again at once
    (same app id and state directory) while the stream goes on; wait for final rows."""
    env = settings_env
    tag = env["COLLECTOR_KAFKA__SOURCES"][:9]
    settings = settings_for(env)
    users, segments = await prepare_stream(settings, tag, 8)
    first = await start(worker_factory(env, "before-crash"))
    lo = int(time.time() * 1000) - 60_000
    timing: dict[str, Any] = {}
    restart: asyncio.Task[Worker] | None = None

    async def crash(i: int) -> None:
        nonlocal restart
        if i == kill_after:
            consumed = metric(await metrics(first), "collector_events_consumed_total")
            timing["consumed_before_kill"] = int(consumed or 0)
            first.stop(signal.SIGKILL)
            timing["killed"] = time.monotonic()
            restart = asyncio.get_running_loop().create_task(
                start(worker_factory(env, "after-crash")))

    events = await stream(settings, tag, users, batches=batches, pace_s=pace_s,
                          rng=random.Random(3), after_batch=crash)
    assert restart is not None
    second = await restart
    timing["ready_after_kill_s"] = round(time.monotonic() - timing.pop("killed"), 1)
    hi = int(time.time() * 1000) + 60_000
    expected = expect(events, segments, **SMALL)

    async def all_final() -> tuple[bool, Any]:
        rows = await mysql_rows(settings, lo, hi, keys_for(tag))
        done = expected.keys() <= rows.keys() and all(f for _, f in rows.values())
        return done and (await _quiet(second))[0], rows if done else sorted(
            expected.keys() - rows.keys())[:5]

    rows = await until(all_final, 60, "every window final after the crash")
    over, wrong = over_counts(rows, expected)
    dead = await read_until(settings, [settings.kafka.deadletter_topic], lambda r: False, 1.0)
    timing["dead_letters"] = len(dead)
    timing["events"] = len(events)
    consumed = metric(await metrics(second), "collector_events_consumed_total") or 0
    # events the restarted worker read again (at least; the first may have read a few
    # more between the metrics scrape and the kill)
    timing["replayed"] = int(consumed) + timing["consumed_before_kill"] - len(events)
    return over, wrong, timing


async def test_kill_9_mid_stream_loses_nothing(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "c" + uuid.uuid4().hex[:8]
    # no commit before the kill: the restarted worker reads everything the first one read
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db", COLLECTOR_APP__STORE="rocksdb",
                       COLLECTOR_KAFKA__COMMIT_INTERVAL="30")
    over, wrong, info = await crash_run(tmp_path, worker_factory, env)
    report(f"kill -9: {info['events']} events, restarted worker ready "
           f"{info['ready_after_kill_s']}s after the kill and read {info['replayed']} events "
           f"again, {info['dead_letters']} dead letters; over-count (stored - oracle) per "
           f"table {over}, total {sum(over.values())}")
    assert not wrong, wrong[:10]
    assert info["replayed"] > 0, "nothing was read twice: the offset guard was not exercised"
    # the offset guard's goal; without it every replayed event counts twice (measured)
    assert sum(over.values()) == 0, over
    # every event is on time; a replayed one is skipped before the lateness check, so it
    # is not dead-lettered as late a second time
    assert info["dead_letters"] == 0, info
