"""The sinks against real servers: exact rows, idempotent replays, rejections, outages.

Happy paths use the shared stack (MariaDB rows keyed by a unique prefix, an InfluxDB
database per test, dropped afterwards).  Outage tests kill and pause their OWN
throwaway mariadbd / influxd (``servers.py``), never the shared ones.  The v2 write
path runs against VictoriaMetrics (it speaks ``/api/v2/write``; InfluxDB 1.6 does not)
when the binary is installed.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from collector.config.settings import InfluxSettings, MySQLSettings, Settings
from collector.db import connect, migrate
from collector.sinks import InfluxSink, MySQLSink, Row
from tests.integration.servers import InfluxDBServer, MariaDBServer, VictoriaMetricsServer, binary
from tests.programs import ensure_program

pytestmark = pytest.mark.integration

BASE_MS = 1_700_000_040_000  # 2023-11-14T22:14:00Z, a minute boundary
NAIVE_EPOCH = datetime(1970, 1, 1, tzinfo=None)  # noqa: DTZ001 - DATETIME columns are naive UTC


def es(prefix: str, type_: str, count: int, *, minute: int = 0, final: bool = False,
       value_count: int | None = None, vsum: float = 0.0) -> Row:
    vc = count if value_count is None else value_count
    values = {"count": count, "value_count": vc, "value_sum": vsum,
              "value_min": (vsum / vc - 1) if vc else None,
              "value_max": (vsum / vc + 1) if vc else None}
    return Row("event_stats", BASE_MS + minute * 60_000, 60, (prefix, type_), values, final,
               BASE_MS + minute * 60_000 + 59_000)


def ua(user: str, count: int, *, minute: int = 0, final: bool = False) -> Row:
    start = BASE_MS + minute * 60_000
    values = {"count": count, "types": ["click", "view"], "first_ts": start + 1_001,
              "last_ts": start + 58_999}
    return Row("user_activity", start, 60, (user,), values, final, start + 58_999)


def seg(prefix: str, country: str, count: int, *, final: bool = False) -> Row:
    return Row("segment_stats", BASE_MS, 300, (prefix, country),
               {"count": count, "value_sum": count * 2.5}, final, BASE_MS + 1)


def _unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ MySQL


_WHERE = {"event_stats": "source = %s ORDER BY window_start, type",
          "user_activity": "user_id LIKE CONCAT(%s, '%%') ORDER BY window_start, user_id",
          "segment_stats": "segment = %s ORDER BY country"}


#: columns as created by 0002, then ``revision`` (added by 0003-0005) before final
_COLUMNS = {
    "event_stats": "window_start, window_seconds, source, type, count, value_count, "
                   "value_sum, value_min, value_max, final, updated_at, revision",
    "user_activity": "window_start, window_seconds, user_id, count, distinct_types, types, "
                     "first_event_at, last_event_at, final, updated_at, revision",
    "segment_stats": "window_start, window_seconds, segment, country, count, value_sum, "
                     "final, updated_at, revision",
}


async def dump(settings: Settings, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables that belongs to ``prefix``, in key order."""
    out = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for table, where in _WHERE.items():
            await cur.execute(f"SELECT {_COLUMNS[table]} FROM {table} WHERE {where}",
                              (prefix,))
            out[table] = list(await cur.fetchall())
    return out


@pytest.fixture
async def db(stack: Settings) -> AsyncIterator[tuple[Settings, str]]:
    """Migrated shared MariaDB and a unique key prefix whose rows are deleted afterwards."""
    await migrate(stack)
    prefix = _unique()
    yield stack, prefix
    async with connect(stack, autocommit=True) as conn, conn.cursor() as cur:
        for table, where in _WHERE.items():
            await cur.execute(f"DELETE FROM {table} WHERE {where.split(' ORDER')[0]}", (prefix,))


async def test_mysql_upserts_exact_rows_replays_change_nothing_final_is_sticky(
    db: tuple[Settings, str],
) -> None:
    settings, p = db
    sink = MySQLSink(settings.mysql)
    rows = [es(p, "click", 3, vsum=6.0), es(p, "view", 2, value_count=0),
            ua(f"{p}-u1", 4), seg(p, "DE", 5), seg(p, "de", 1)]  # 'DE' != 'de': binary keys
    sink.add(rows)
    try:
        result = await sink.flush()
        assert (result.written, result.rejected, result.pending) == (5, 0, 0)
        first = await dump(settings, p)
        ws = datetime(2023, 11, 14, 22, 14)  # noqa: DTZ001 - naive UTC, as stored
        es_rows = [r[:10] for r in first["event_stats"]]
        assert es_rows == [(ws, 60, p, "click", 3, 3, 6.0, 1.0, 3.0, 0),
                           (ws, 60, p, "view", 2, 0, 0.0, None, None, 0)]
        (user,) = first["user_activity"]
        assert user[:9] == (ws, 60, f"{p}-u1", 4, 2, "click,view",
                            ws + timedelta(milliseconds=1_001),
                            ws + timedelta(milliseconds=58_999), 0)
        assert [r[:7] for r in first["segment_stats"]] == [
            (ws, 300, p, "DE", 5, 12.5, 0), (ws, 300, p, "de", 1, 2.5, 0)]
        updated = first["event_stats"][0][10]
        assert abs((updated - NAIVE_EPOCH).total_seconds() - time.time()) < 60  # UTC, just now

        sink.add(rows)  # at-least-once replay: nothing changes, not even updated_at
        assert (await sink.flush()).written == 5
        assert await dump(settings, p) == first

        sink.add([es(p, "click", 7, vsum=14.0, final=True)])
        await sink.flush()
        sink.add([es(p, "click", 1, vsum=1.0)])  # stale non-final after final: ignored
        await sink.flush()
        after = await dump(settings, p)
        assert after["event_stats"][0][4:10] == (7, 7, 14.0, 1.0, 3.0, 1)
        assert after["event_stats"][1] == first["event_stats"][1]
        # a late event corrected the final row: new values and the next revision
        sink.add([Row("event_stats", BASE_MS, 60, (p, "click"),
                      {"count": 8, "value_count": 8, "value_sum": 15.0, "value_min": 1.0,
                       "value_max": 3.0}, True, BASE_MS + 2, revision=1)])
        await sink.flush()
        corrected = await dump(settings, p)
        assert corrected["event_stats"][0][4:10] == (8, 8, 15.0, 1.0, 3.0, 1)
        assert corrected["event_stats"][0][11] == 1  # revision
    finally:
        await sink.close()


async def test_mysql_stores_hostile_strings_verbatim_and_long_batches_whole(
    db: tuple[Settings, str],
) -> None:
    """The sink escapes values itself (``sql_values``): quotes, backslashes, NULs,
    ``%`` and non-ASCII land as sent, and a batch larger than one statement lands whole."""
    settings, p = db
    hostile = ["it's", "back\\slash", "a\\'b", "nul\x00x", "new\nline", "%s %(x)s",
               "'); DROP TABLE event_stats; --", "ünï ✓ 🚀", "\\", "''"]
    sink = MySQLSink(settings.mysql, batch_size=20_000)
    rows = [es(p, t, i + 1) for i, t in enumerate(hostile)]
    many = [es(p, f"bulk-{i:05d}-" + "z" * 40, 1, minute=i % 7) for i in range(12_000)]
    sink.add(rows + many)  # ~1.6 MB of VALUES: more than one statement of 1,024,000 bytes
    try:
        result = await sink.flush()
        assert (result.written, result.rejected, result.pending) == (len(rows) + len(many), 0, 0)
        stored = await dump(settings, p)
        got = {r[3]: r[4] for r in stored["event_stats"]}
        assert {t: got[t] for t in hostile} == {t: i + 1 for i, t in enumerate(hostile)}
        assert len(got) == len(hostile) + len(many)
    finally:
        await sink.close()


async def test_mysql_rejects_only_the_bad_rows(db: tuple[Settings, str]) -> None:
    settings, p = db
    rejected: list[tuple[Row, str]] = []
    sink = MySQLSink(settings.mysql, on_rejected=lambda r, why: rejected.append((r, why)))
    too_long = ua(p + "x" * 300, 1)
    not_a_number = es(p, "nan", 1, vsum=math.nan)
    good = [ua(f"{p}-u{i}", i + 1, minute=i) for i in range(8)] + [es(p, "ok", 2)]
    sink.add([*good[:3], too_long, *good[3:6], not_a_number, *good[6:]])
    try:
        result = await sink.flush()
        assert (result.written, result.rejected, result.pending) == (len(good), 2, 0)
        reasons = {r.key: why for r, why in rejected}
        assert set(reasons) == {too_long.key, not_a_number.key}
        assert "1406" in reasons[too_long.key]  # data too long
        assert "nan" in reasons[not_a_number.key].lower()
        stored = await dump(settings, p)
        assert [r[2] for r in stored["user_activity"]] == [f"{p}-u{i}" for i in range(8)]
        assert [r[3] for r in stored["event_stats"]] == ["ok"]
        assert sink.health().healthy
    finally:
        await sink.close()


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    if binary("mariadbd") is None:
        pytest.skip("mariadb-server is not installed")
    server = MariaDBServer(tmp_path_factory.mktemp("sink-mariadb"))
    server.init()
    yield server
    server.kill()


async def test_mysql_outage_keeps_rows_and_catches_up(mariadb: MariaDBServer,
                                                      stack: Settings) -> None:
    mysql = MySQLSettings(dsn=SecretStr(mariadb.dsn), timeout=0.5)
    settings = stack.model_copy(update={"mysql": mysql})
    await migrate(settings)
    sink = MySQLSink(mysql, write_timeout=1.0, retry_base=0.05, retry_cap=0.2)
    p = _unique()
    try:
        sink.add([ua(f"{p}-a", 1)])
        assert (await sink.flush()).written == 1

        await asyncio.to_thread(mariadb.kill)  # refused / connection lost
        sink.add([ua(f"{p}-a", 2), *(ua(f"{p}-{i:03}", i) for i in range(200))])
        result = await sink.flush(deadline=time.monotonic() + 0.5)
        assert result.written == 0 and result.pending == 201 and result.error
        health = sink.health()
        assert not health.healthy and health.failing_since is not None

        restarted = time.monotonic()
        await asyncio.to_thread(mariadb.start)
        ready = time.monotonic()
        result = await sink.flush()
        landed = time.monotonic()
        assert (result.written, result.pending, result.error) == (201, 0, None)
        assert sink.health().healthy
        rows = (await dump(settings, p))["user_activity"]
        assert len(rows) == 201 and rows[-1][2:4] == (f"{p}-a", 2)
        print(f"\nmysql catch-up: server restart {ready - restarted:.2f}s, "
              f"flush of 201 pending rows {landed - ready:.3f}s")

        mariadb.pause()  # accepts TCP, answers nothing: the write must time out
        sink.add([ua(f"{p}-a", 3)])
        paused = time.monotonic()
        result = await sink.flush(deadline=time.monotonic() + 0.2)
        assert result.pending == 1 and "timed out" in (result.error or "")
        assert time.monotonic() - paused < 3
        mariadb.resume()
        assert (await sink.flush()).written == 1
    finally:
        if not mariadb.running:
            await asyncio.to_thread(mariadb.start)
        mariadb.resume()
        await sink.close()


# ------------------------------------------------------------------ InfluxDB


async def select(settings: InfluxSettings, q: str) -> list[dict[str, Any]]:
    """Result rows of one InfluxQL query as dicts, times in epoch ms."""
    async with aiohttp.ClientSession() as http, http.get(
        f"{settings.url}/query", params={"db": settings.database, "q": q, "epoch": "ms"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        series = (await resp.json())["results"][0].get("series", [])
    return [dict(zip(s["columns"], v, strict=True)) for s in series for v in s["values"]]


@pytest.fixture
async def influx_db(stack: Settings) -> AsyncIterator[InfluxSettings]:
    """A database of its own on the shared InfluxDB, dropped afterwards."""
    name = _unique()
    url = stack.influx.url
    async with aiohttp.ClientSession() as http:
        # InfluxDB 1.x answers /query with 200 even when a statement failed (the error is
        # in the body), and it has lost a CREATE that raced a DROP (404 "database not
        # found" on the next write): create until it lists the database
        deadline = time.monotonic() + 15
        while True:
            async with http.post(f"{url}/query", data={"q": f'CREATE DATABASE "{name}"'}) as resp:
                created = resp.status == 200 and '"error"' not in await resp.text()
            async with http.post(f"{url}/query", data={"q": "SHOW DATABASES"}) as resp:
                listed = f'"{name}"' in await resp.text()
            if created and listed:
                break
            assert time.monotonic() < deadline, f"InfluxDB did not create database {name}"
            await asyncio.sleep(0.2)
        yield stack.influx.model_copy(update={"database": name, "timeout": 2.0})
        # read the answer: InfluxDB 1.6 can lose a CREATE DATABASE that runs while a DROP
        # is still being applied (reproduced: 3 of 45 creates lost), i.e. the next test's
        async with http.post(f"{url}/query", data={"q": f'DROP DATABASE "{name}"'}) as resp:
            await resp.read()


async def test_influx_v1_writes_points_and_rewrites_overwrite(influx_db: InfluxSettings) -> None:
    sink = InfluxSink(influx_db)
    rows = [es("web", "click", 3, vsum=6.0), es("web", "view", 2, value_count=0, minute=1),
            seg("gold", "DE", 5, final=True), ua("u1", 4)]  # user_activity: never written
    sink.add(rows)
    assert sink.pending == 3
    try:
        assert (await sink.flush()).written == 3
        got = await select(influx_db, "SELECT * FROM event_stats ORDER BY time")
        assert got == [
            {"time": BASE_MS, "source": "web", "type": "click", "count": 3, "value_count": 3,
             "sum": 6.0, "min": 1.0, "max": 3.0, "mean": 2.0, "final": False, "revision": 0},
            {"time": BASE_MS + 60_000, "source": "web", "type": "view", "count": 2,
             "value_count": 0, "sum": 0.0, "min": None, "max": None, "mean": None,
             "final": False, "revision": 0},
        ]
        segs = await select(influx_db, "SELECT * FROM segment_stats")
        assert segs == [{"time": BASE_MS, "segment": "gold", "country": "DE", "count": 5,
                         "sum": 12.5, "final": True, "revision": 0}]
        measurements = await select(influx_db, "SHOW MEASUREMENTS")
        assert [m["name"] for m in measurements] == ["event_stats", "segment_stats"]

        sink.add([es("web", "click", 9, vsum=18.0, final=True)])
        assert (await sink.flush()).written == 1
        got = await select(influx_db, "SELECT * FROM event_stats ORDER BY time")
        assert len(got) == 2  # same point overwritten, not a new one
        assert (got[0]["count"], got[0]["sum"], got[0]["final"]) == (9, 18.0, True)
        sink.add([Row("event_stats", BASE_MS, 60, ("web", "click"),
                      {"count": 10, "value_count": 10, "value_sum": 20.0, "value_min": 1.0,
                       "value_max": 3.0}, True, BASE_MS + 2, revision=1)])
        assert (await sink.flush()).written == 1
        got = await select(influx_db, "SELECT * FROM event_stats ORDER BY time")
        assert len(got) == 2  # a correction overwrites the point in place
        assert (got[0]["count"], got[0]["revision"]) == (10, 1)
    finally:
        await sink.close()


async def test_influx_v1_rejects_only_the_bad_rows(influx_db: InfluxSettings) -> None:
    # ``mean`` was a string in this shard first: any row with a mean now conflicts.
    line = f'event_stats,source=seed,type=seed mean="text" {BASE_MS}'
    async with aiohttp.ClientSession() as http, http.post(
        f"{influx_db.url}/write", params={"db": influx_db.database, "precision": "ms"},
        data=line,
    ) as resp:
        assert resp.status == 204
    rejected: list[tuple[Row, str]] = []
    sink = InfluxSink(influx_db, on_rejected=lambda r, why: rejected.append((r, why)))
    conflicting = es("web", "conflict", 2, vsum=3.0)  # has min/max/mean
    good = [es("web", f"t{i}", 1 + i, value_count=0, minute=i) for i in range(6)]
    too_late = Row("event_stats", 10**16, 60, ("web", "year2286"), good[0].values, False, 0)
    sink.add([*good[:2], conflicting, *good[2:5], too_late, good[5]])
    try:
        result = await sink.flush()
        assert (result.written, result.rejected, result.pending) == (6, 2, 0)
        reasons = {r.key[1]: why for r, why in rejected}
        assert set(reasons) == {"conflict", "year2286"}
        assert "field type conflict" in reasons["conflict"]
        assert reasons["conflict"].startswith("influxdb 400: ")
        got = await select(influx_db, "SELECT count FROM event_stats WHERE source = 'web'")
        assert sorted(r["count"] for r in got) == [1, 2, 3, 4, 5, 6]
        assert sink.health().healthy
    finally:
        await sink.close()


@pytest.mark.parametrize(("api", "message"), [
    ("v1", "influxdb 404: database not found"),  # no such database
    ("v2", "influxdb 404: 404 page not found"),  # InfluxDB 1.6 has no /api/v2/write
])
async def test_influx_configuration_errors_keep_rows_and_report(
    stack: Settings, api: str, message: str
) -> None:
    settings = stack.influx.model_copy(update={"database": _unique(), "api": api})
    rejected: list[Row] = []
    sink = InfluxSink(settings, on_rejected=lambda r, why: rejected.append(r))
    sink.add([es("web", "click", 1)])
    try:
        result = await sink.flush(deadline=time.monotonic() + 5)
        assert result.pending == 1 and rejected == []
        health = sink.health()
        assert not health.healthy
        assert health.last_error is not None and health.last_error.startswith(message)
    finally:
        await sink.close()


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    if binary("influxd") is None:
        pytest.skip("influxdb is not installed")
    server = InfluxDBServer(tmp_path_factory.mktemp("sink-influxd"))
    server.start()
    yield server
    server.kill()


async def test_influx_outage_keeps_rows_and_catches_up(influxd: InfluxDBServer) -> None:
    settings = InfluxSettings(url=influxd.url, database=influxd.database, timeout=0.5)
    sink = InfluxSink(settings, retry_base=0.05, retry_cap=0.2)
    try:
        sink.add([es("web", "a", 1)])
        assert (await sink.flush()).written == 1

        await asyncio.to_thread(influxd.kill)
        sink.add([es("web", "a", 2), *(es("web", f"t{i:03}", i, minute=1) for i in range(300))])
        result = await sink.flush(deadline=time.monotonic() + 0.5)
        assert result.written == 0 and result.pending == 301 and result.error
        assert not sink.health().healthy

        restarted = time.monotonic()
        await asyncio.to_thread(influxd.start)
        ready = time.monotonic()
        result = await sink.flush()
        landed = time.monotonic()
        assert (result.written, result.pending, result.error) == (301, 0, None)
        assert sink.health().healthy
        got = await select(settings, "SELECT count FROM event_stats WHERE type = 'a'")
        assert [r["count"] for r in got] == [2]
        (total,) = await select(settings, "SELECT count(count) FROM event_stats")
        assert total["count"] == 301
        print(f"\ninfluxdb catch-up: server restart {ready - restarted:.2f}s, "
              f"flush of 301 pending rows {landed - ready:.3f}s")

        influxd.pause()
        sink.add([es("web", "a", 3)])
        paused = time.monotonic()
        result = await sink.flush(deadline=time.monotonic() + 0.2)
        assert result.pending == 1 and "timed out" in (result.error or "")
        assert time.monotonic() - paused < 3
        influxd.resume()
        assert (await sink.flush()).written == 1
    finally:
        if not influxd.running:
            await asyncio.to_thread(influxd.start)
        influxd.resume()
        await sink.close()


async def test_influx_v2_path_against_victoria_metrics(tmp_path: Path) -> None:
    # the only server here that speaks /api/v2/write; installed like the stack's services
    ensure_program("victoria-metrics", "victoria-metrics")
    server = VictoriaMetricsServer(tmp_path)
    await asyncio.to_thread(server.start)
    settings = InfluxSettings(url=server.url, api="v2", org="acme", bucket="collector",
                              token=SecretStr("secret"), timeout=2.0)
    sink = InfluxSink(settings)
    now_minute = int(time.time()) // 60 * 60_000  # recent: VictoriaMetrics has a retention
    rows = [Row("event_stats", now_minute - 60_000 * i, 60, ("web", "click"),
                {"count": 10 + i, "value_count": 0, "value_sum": 0.0, "value_min": None,
                 "value_max": None}, False, now_minute) for i in range(3)]
    sink.add(rows)
    try:
        assert (await sink.flush()).written == 3
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/internal/force_flush"):
                pass  # make the samples searchable now
            async with http.get(f"{server.url}/api/v1/export",
                                params={"match[]": '{__name__="event_stats_count"}'}) as resp:
                assert resp.status == 200
                lines = [ln for ln in (await resp.text()).splitlines() if ln]
        assert len(lines) == 1, lines
        series = orjson.loads(lines[0])
        assert series["metric"]["source"] == "web" and series["metric"]["type"] == "click"
        got = dict(zip(series["timestamps"], series["values"], strict=True))
        assert got == {r.window_start_ms: r.values["count"] for r in rows}
    finally:
        await sink.close()
        await asyncio.to_thread(server.kill)
