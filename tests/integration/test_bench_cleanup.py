"""benchmarks/cleanup.py against the real stack: a run's topics, Influx database and
``event_stats`` rows go; another run's and everything else stay."""

from __future__ import annotations

import asyncio
import urllib.parse

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks.cleanup import drop_runs
from benchmarks.common import new_tag
from collector.config import Settings
from collector.db import connect
from collector.kafka.clients import client_kwargs

pytestmark = pytest.mark.integration


async def _topics(settings: Settings, create: list[str] | None = None) -> set[str]:
    """The broker's topics; with ``create``, once all of them show in its metadata
    (CreateTopics returns before every broker's metadata cache has them: CI saw a
    listing without the topics it had just created)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        if create:
            response = await admin.create_topics([NewTopic(t, 1, 1) for t in create])
            errors = [(name, code) for name, code, *_ in response.topic_errors
                      if code not in (0, 7)]  # 7: timed out, the broker still creates it
            assert not errors, errors
        listed = set(await admin.list_topics())
        for _ in range(40):
            if not create or set(create) <= listed:
                break
            await asyncio.sleep(0.25)
            listed = set(await admin.list_topics())
        return listed
    finally:
        await admin.close()


async def _influx(settings: Settings, q: str) -> str:
    async with aiohttp.ClientSession() as session, session.post(
        f"{settings.influx.url}/query", data=urllib.parse.urlencode({"q": q}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def _sources(settings: Settings, sources: list[str]) -> set[str]:
    marks = ",".join(["%s"] * len(sources))
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(f"SELECT DISTINCT source FROM event_stats WHERE source IN ({marks})",
                          sources)
        return {row[0] for row in await cur.fetchall()}


async def test_a_run_drops_its_own_and_nothing_else(migrated: Settings) -> None:
    mine, other = new_tag(), new_tag()
    keep_topic = f"k{mine}.raw.x"  # not a bench tag: never dropped
    topics = [f"{mine}.raw.{mine}m", f"{mine}-collector-state-changelog",
              f"repartition__quix0--{mine}.raw.{mine}o--source_type",
              f"changelog__quix0--repartition.{mine}.raw.{mine}o.source_type--count",
              f"{mine}-ref-counts-changelog",
              f"{other}.raw.{other}m", keep_topic]
    ours = set(topics[:5])
    assert set(topics) <= await _topics(migrated, topics)
    for tag in (mine, other):
        await _influx(migrated, f'CREATE DATABASE "{tag}db"')
    sources = [f"{mine}m", f"{mine}w", f"{other}m"]
    async with connect(migrated, autocommit=True) as conn, conn.cursor() as cur:
        for source in sources:
            await cur.execute(
                "INSERT INTO event_stats (window_start, window_seconds, source, type, count, "
                "value_count, value_sum, final, updated_at) "
                "VALUES (%s, 60, %s, 'view', 1, 0, 0, 1, %s)",
                ("2026-12-07 00:00:00", source, "2026-12-07 00:00:00"))
    try:
        dropped = await drop_runs(migrated, {mine})
        assert dropped == {"topics": 5, "influx_databases": 1, "event_stats_rows": 2}
        left = await _topics(migrated)
        for _ in range(20):  # the broker's metadata may lag its delete by a moment
            if not left & ours:
                break
            await asyncio.sleep(0.5)
            left = await _topics(migrated)
        assert not left & ours
        assert {f"{other}.raw.{other}m", keep_topic} <= left
        databases = await _influx(migrated, "SHOW DATABASES")
        assert f'"{other}db"' in databases and f'"{mine}db"' not in databases
        assert await _sources(migrated, sources) == {f"{other}m"}
    finally:
        await drop_runs(migrated, {mine, other})
        admin = AIOKafkaAdminClient(**client_kwargs(migrated))
        await admin.start()
        try:
            await admin.delete_topics([keep_topic])
        finally:
            await admin.close()
