"""An aggregate declared in configuration only, through a real worker: its table is
created at start-up, its rows in MariaDB and InfluxDB equal an independent oracle
(tests.oracle.group_by_oracle), the query API serves it, and bad declarations or a
disagreeing table stop the worker with exit 2 naming the field or column.

Input: several users over four partitions and two sources, a ``properties.plan`` that
is sometimes missing, events out of order inside the grace period, duplicates (an HTTP
retry: same user and event_id) and late events past the allowed lateness.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC
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
from tests.e2e.test_windows_e2e import wait_for, window_env
from tests.e2e.workers import Worker, isolated_env
from tests.oracle import group_by_oracle

pytestmark = pytest.mark.e2e

MEASURES = {"count": ("count", None), "sum_value": ("sum", "value"),
            "max_value": ("max", "value"), "users": ("distinct", "user_id")}


def declare(tmp_path: Path, name: str) -> Path:
    """The INI half of the declaration (the window size comes from the environment)."""
    ini = tmp_path / "collector.ini"
    ini.write_text(f"[aggregate.{name}]\n"
                   "group_by = source, properties.plan\n"
                   "window = tumbling\n"
                   "measures = count, sum(value), max(value), users=distinct(user_id)\n")
    return ini


def events_for(tag: str, t0: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(counted, late): counted events include duplicates of earlier ones."""
    rng = random.Random(16)
    users = [f"{tag}u{i}" for i in range(8)]
    counted: list[dict[str, Any]] = []
    for i in range(200):
        event: dict[str, Any] = {
            "event_id": f"{tag}-{i}", "user_id": rng.choice(users),
            "type": rng.choice(["click", "view", "buy"]),
            "ts": t0 + i * 600 + rng.randrange(-20_000, 20_000)}  # out of order, in grace
        plan = rng.choice(["free", "pro", "team", None])
        if plan is not None:
            event["properties"] = {"plan": plan, "n": i}
        if rng.random() < 0.6:
            event["value"] = rng.choice([1.5, 2.0, 7.25, 10.0])
        counted.append(event)
    counted += [dict(e) for e in rng.sample(counted, 6)]  # retried: counted once
    late = [{"event_id": f"{tag}-late-{i}", "user_id": users[i], "type": "click",
             "ts": t0 - 20 * 60_000 + i, "properties": {"plan": "pro"}} for i in range(4)]
    return counted, late


async def drop_table(settings: Settings, name: str) -> None:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(f"DROP TABLE IF EXISTS `{name}`")


async def table_columns(settings: Settings, name: str) -> int:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM information_schema.columns WHERE "
                          "table_schema = DATABASE() AND table_name = %s", (name,))
        (count,) = await cur.fetchone()
    return int(count)


async def table_rows(settings: Settings, name: str) -> dict[Any, tuple[dict[str, Any], bool]]:
    out = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(
            f"SELECT window_start, window_seconds, source, properties_plan, `count`, "
            f"sum_value, max_value, users, users_truncated, final FROM `{name}`")
        for ws, secs, source, plan, count, total, top, users, trunc, final in (
                await cur.fetchall()):
            ms = int(ws.replace(tzinfo=UTC).timestamp() * 1000)  # naive UTC
            out[(name, ms, secs, (source, plan))] = (
                {"count": count, "sum_value": total, "max_value": top, "users": users,
                 "users_truncated": bool(trunc)}, bool(final))
    return out


async def test_configured_aggregate_end_to_end(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "c" + uuid.uuid4().hex[:8]
    name = f"plans_{tag}"
    env = window_env(tmp_path, tag)
    env["COLLECTOR_CONFIG"] = str(declare(tmp_path, name))
    env[f"COLLECTOR_AGGREGATES__{name.upper()}__SIZE_SECONDS"] = "60"
    influx_only = f"types_{tag}"  # no MySQL table: InfluxDB and the live windows only
    env[f"COLLECTOR_AGGREGATES__{influx_only.upper()}__GROUP_BY"] = "type"
    env[f"COLLECTOR_AGGREGATES__{influx_only.upper()}__SINKS"] = "influxdb"
    settings = settings_for(env)
    assert settings.aggregates[name].size_seconds == 60  # INI and env together
    await ensure_topics(settings)
    await influx_create_db(settings)
    try:
        worker = worker_factory(env).start()
        worker.wait_ready()
        assert f"created the MySQL table of configured aggregate {name}" in worker.text()

        t0 = (int(time.time() * 1000) - 2 * 3_600_000) // 60_000 * 60_000
        counted, late = events_for(tag, t0)
        sources = settings.kafka.sources
        for i, event in enumerate(counted):
            event["_source"] = sources[i % 2]

        def message(e: dict[str, Any]) -> tuple[bytes, bytes]:
            return e["user_id"].encode(), orjson.dumps(
                {k: v for k, v in e.items() if k[0] != "_"})

        for source in sources:
            await produce(settings, settings.kafka.raw_topic(source),
                          [message(e) for e in counted if e["_source"] == source])
        unique = {e["event_id"]: e for e in counted}
        await read_until(settings, [settings.kafka.enriched_topic],
                         lambda recs: len(recs) >= len(counted), limit_s=60)
        await produce(settings, settings.kafka.raw_topic(sources[0]),
                      [message(e) for e in late])
        await read_until(settings, [settings.kafka.deadletter_topic],
                         lambda recs: len(recs) >= len(late), limit_s=60)

        enriched = [{**e, "source": e["_source"]} for e in unique.values()]
        expected = group_by_oracle(enriched, name, ["source", "properties.plan"], MEASURES)
        assert {key[1] for *_, key in expected} == {"free", "pro", "team", "unknown"}

        async def all_final() -> Any:
            rows = await table_rows(settings, name)
            if set(rows) == set(expected) and all(final for _, final in rows.values()):
                return rows
            return None

        rows = await wait_for(all_final, 90, f"final rows in MySQL {name}")
        for ident, values in expected.items():
            assert rows[ident][0] == pytest.approx(values), (ident, rows[ident], values)
        second = sorted({ident[1] for ident in rows})[1]  # a whole window, for the docs
        print(f"{name}: {len(rows)} rows; window {second}:",
              *[(key, values, final) for (_, ws, _, key), (values, final) in
                sorted(rows.items()) if ws == second], sep="\n  ")

        points = await influx_query(settings, f'SELECT * FROM "{name}"')
        assert len(points) == len(expected)
        for p in points:
            want = expected[(name, p["time"], 60, (p["source"], p["properties_plan"]))]
            assert (p["count"], p["users"]) == (want["count"], want["users"])
            assert p["sum_value"] == pytest.approx(want["sum_value"])

        lo, hi = t0 - 10 * 60_000, t0 + 10 * 60_000
        status, _, body = await get(worker.port, f"/api/v1/aggregates/{name}",
                                    {"from": lo, "to": hi, "properties_plan": "pro"})
        assert status == 200, body
        want = sorted((ws, key) for (_, ws, _, key) in expected if key[1] == "pro")
        got = [(w["window_start_ms"], (w["key"]["source"], w["key"]["properties_plan"]))
               for w in body["windows"]]
        assert got == want
        for w in body["windows"]:
            ident = (name, w["window_start_ms"], 60, tuple(w["key"].values()))
            assert w["values"] == pytest.approx(expected[ident]) and w["final"] is True
        status, _, body = await get(worker.port, f"/api/v1/aggregates/{name}",
                                    {"source": "nosuchsource"})
        assert status == 400 and body["field"] == "source"
        status, _, body = await get(worker.port, "/api/v1/aggregates/event_stats")
        assert status == 404 and body["field"] == "name"
        status, _, doc = await get(worker.port, "/api/openapi.json")
        assert f"/api/v1/aggregates/{name}" in doc["paths"]

        by_type = group_by_oracle(enriched, influx_only, ["type"], {"count": ("count", None)})
        points = await influx_query(settings, f'SELECT * FROM "{influx_only}"')
        assert {(p["time"], p["type"]): p["count"] for p in points} == {
            (ws, key[0]): v["count"] for (_, ws, _, key), v in by_type.items()}
        status, _, body = await get(worker.port, f"/api/v1/aggregates/{influx_only}",
                                    {"from": lo, "to": hi})
        # 2 h old: past windows.expires_seconds, so only what the state still holds
        assert status == 200 and body["complete"] is False, body
        assert "only in InfluxDB" in body["incomplete"]
        for w in body["windows"]:
            want = by_type[(influx_only, w["window_start_ms"], 60, (w["key"]["type"],))]
            assert w["values"]["count"] == want["count"]
        assert await table_columns(settings, influx_only) == 0
    finally:
        await drop_table(settings, name)


def test_an_invalid_declaration_exits_2_naming_the_field(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, COLLECTOR_AGGREGATES__BAD__GROUP_BY="source,colour",
                       COLLECTOR_AGGREGATES__WORSE__GROUP_BY="type",
                       COLLECTOR_AGGREGATES__WORSE__MEASURES="count,median(value)")
    worker = worker_factory(env).start()
    assert worker.proc is not None and worker.proc.wait(60) == 2
    text = worker.text()
    assert "aggregates.bad.group_by (COLLECTOR_AGGREGATES__BAD__GROUP_BY" in text
    assert "unknown field 'colour'" in text
    assert "aggregates.worse.measures" in text and "unknown measure 'median'" in text


async def test_a_disagreeing_table_exits_2_naming_the_column(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    name = "t" + uuid.uuid4().hex[:8]
    env = isolated_env(tmp_path, **{f"COLLECTOR_AGGREGATES__{name.upper()}__GROUP_BY": "type",
                                    f"COLLECTOR_AGGREGATES__{name.upper()}__MEASURES":
                                        "count,sum(value)"})
    settings = settings_for(env)
    await ensure_topics(settings)
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        # an earlier declaration of the same name: sum(value) was then a count
        await cur.execute(
            f"CREATE TABLE `{name}` (window_start DATETIME(3) NOT NULL, window_seconds INT "
            "NOT NULL, type VARCHAR(64) NOT NULL, `count` BIGINT NOT NULL, sum_value BIGINT "
            "NOT NULL, revision INT NOT NULL, final BOOL NOT NULL, updated_at DATETIME(3) "
            "NOT NULL, PRIMARY KEY (window_start, window_seconds, type))")
    try:
        worker = worker_factory(env).start()
        assert worker.proc is not None and worker.proc.wait(90) == 2
        assert (f"{name}.sum_value: the definition says DOUBLE NOT NULL, the table has "
                "bigint NOT NULL") in worker.text()
    finally:
        await drop_table(settings, name)


async def test_mysql_down_at_start_the_table_comes_with_it(
    stack: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """A worker starting while MySQL is down starts anyway, creates the table once MySQL
    answers, and the rows kept meanwhile land in it."""
    from collector.db import migrate
    from tests.integration.servers import MariaDBServer, binary

    if binary("mariadbd") is None:
        pytest.skip("mariadb-server is not installed")
    server = MariaDBServer(tmp_path / "mariadb")
    server.init()
    server.kill()  # our own throwaway server, never the shared one
    tag = "d" + uuid.uuid4().hex[:8]
    env = window_env(tmp_path, tag)
    env.update({"COLLECTOR_MYSQL__DSN": server.dsn, "COLLECTOR_MYSQL__TIMEOUT": "1",
                "COLLECTOR_AGGREGATES__LATE_TABLE__GROUP_BY": "type"})
    settings = settings_for(env)
    await ensure_topics(settings)
    try:
        worker = worker_factory(env).start()
        worker.wait_ready()
        assert "could not create the configured aggregates' tables yet" in worker.text()
        t0 = (int(time.time() * 1000) - 3_600_000) // 60_000 * 60_000
        events = [{"event_id": f"{tag}-{i}", "user_id": f"{tag}u{i % 3}", "type": "click",
                   "ts": t0 + i * 1000} for i in range(5)]
        await produce(settings, settings.kafka.raw_topic(settings.kafka.sources[0]),
                      [(e["user_id"].encode(), orjson.dumps(e)) for e in events])
        server.start()
        await migrate(settings)  # the users table; the worker creates late_table itself

        async def row() -> Any:
            if "created the MySQL table of configured aggregate late_table" not in (
                    worker.text()):
                return None
            async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
                await cur.execute("SELECT `type`, `count`, final FROM late_table")
                rows = [tuple(r) for r in await cur.fetchall()]
            return rows if rows and all(r[2] for r in rows) else None

        assert await wait_for(row, 90, "late_table's row") == [("click", 5, 1)]
    finally:
        server.kill()


async def test_a_restart_recovers_the_partials_and_keeps_the_table(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """Half the events, every row written final, a restart (state from the changelog,
    the table found as it is), the other half into the same windows: every row ends
    equal to the oracle (the first half neither lost nor counted twice)."""
    tag = "r" + uuid.uuid4().hex[:8]
    name = f"plans_{tag}"
    env = window_env(tmp_path, tag)
    env["COLLECTOR_CONFIG"] = str(declare(tmp_path, name))
    settings = settings_for(env)
    await ensure_topics(settings)
    await influx_create_db(settings)
    # 10 min old: a window's state outlives the restart (expires_seconds after its start
    # by the close mark, which the idle rule moves to the wall clock)
    counted, _ = events_for(tag, (int(time.time() * 1000) - 600_000) // 60_000 * 60_000)
    sources = settings.kafka.sources
    for i, event in enumerate(counted):
        event["_source"] = sources[i % 2]
    halves = [counted[::2], counted[1::2]]

    async def send(events: list[dict[str, Any]]) -> None:
        for source in sources:
            await produce(settings, settings.kafka.raw_topic(source),
                          [(e["user_id"].encode(),
                            orjson.dumps({k: v for k, v in e.items() if k[0] != "_"}))
                           for e in events if e["_source"] == source])

    unique = {e["event_id"]: e for e in counted}
    expected = group_by_oracle([{**e, "source": e["_source"]} for e in unique.values()],
                               name, ["source", "properties.plan"], MEASURES)
    try:
        first = worker_factory(env, name="first").start()
        first.wait_ready()
        await send(halves[0])
        await read_until(settings, [settings.kafka.enriched_topic],
                         lambda recs: len(recs) >= len(halves[0]), limit_s=60)
        half = {e["event_id"]: e for e in halves[0]}
        first_rows = group_by_oracle([{**e, "source": e["_source"]} for e in half.values()],
                                     name, ["source", "properties.plan"], MEASURES)

        async def first_final() -> Any:
            rows = await table_rows(settings, name)
            return set(rows) == set(first_rows) and all(f for _, f in rows.values())

        await wait_for(first_final, 90, "the first half's rows, final")
        assert first.stop() == 0
        second = worker_factory(env, name="second").start()
        second.wait_ready()
        assert "created the MySQL table" not in second.text()  # found, and it matched
        await send(halves[1])

        async def all_final() -> Any:
            rows = await table_rows(settings, name)
            done = set(rows) == set(expected) and all(f for _, f in rows.values())
            return rows if done and all(rows[i][0]["count"] == v["count"]
                                        for i, v in expected.items()) else None

        rows = await wait_for(all_final, 90, f"rows of {name} equal to the oracle")
        for ident, values in expected.items():
            assert rows[ident][0] == pytest.approx(values), (ident, rows[ident], values)
    finally:
        await drop_table(settings, name)

