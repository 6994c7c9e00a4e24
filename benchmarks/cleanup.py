"""Drop what benchmark runs leave on the shared local stack.

Each run makes its own topics under its tag (raw, outputs, Faust's changelogs and
assignor, the Quix peer's repartition and changelog topics), an InfluxDB database and
``event_stats`` rows for its tagged sources.  Nothing removed them: on 2026-12-07 the
local broker held 1,996 bench topics in 55 GB of log segments and influxd 190 bench
databases in 1 GB (2 GB RSS), and every later run shared the machine with that (the
numbers in docs/benchmarks.md, fifteenth round).  A run now drops its own at its end,
and ``run`` drops the leftovers of earlier runs before it starts, so each run finds the
stack in the same state.  Tags are :func:`benchmarks.common.new_tag`'s ``b`` + 8 hex.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection
from typing import Any

import aiohttp
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import Settings
from collector.db import connect
from collector.kafka.clients import client_kwargs

#: a bench tag where a topic name has it: at the start (the run's and its reference
#: peer's topics), or after Quix's ``--`` (``repartition__quix…--<tag>.raw…``) or
#: ``--repartition.`` (``changelog__quix…--repartition.<tag>.raw…``)
TOPIC_TAG = re.compile(r"(?:^|--(?:repartition\.)?)(b[0-9a-f]{8})[.-]")
#: Kafka's UNKNOWN_TOPIC_OR_PARTITION: already gone is dropped
UNKNOWN_TOPIC = 3
DATABASE_TAG = re.compile(r"^(b[0-9a-f]{8})db$")
SOURCES = ("m", "w", "o")  # benchmarks.common.isolated_env's sources, after the tag
#: topics per delete request (the broker answers each request within its timeout)
CHUNK = 100


def tagged(name: str, pattern: re.Pattern[str], tags: Collection[str] | None) -> bool:
    """Whether ``name`` belongs to one of ``tags`` (None: to any bench run)."""
    found = pattern.search(name)
    return found is not None and (tags is None or found.group(1) in tags)


async def drop_runs(settings: Settings, tags: Collection[str] | None) -> dict[str, int]:
    """Delete the topics, Influx databases and ``event_stats`` rows of ``tags`` (None:
    of every bench run found); what was dropped, per kind."""
    return {"topics": await _drop_topics(settings, tags),
            "influx_databases": await _drop_databases(settings, tags),
            "event_stats_rows": await _drop_rows(settings, tags)}


async def _drop_topics(settings: Settings, tags: Collection[str] | None) -> int:
    admin = AIOKafkaAdminClient(**client_kwargs(settings), request_timeout_ms=120_000)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if tagged(t, TOPIC_TAG, tags))
        failed: list[tuple[str, int]] = []
        for at in range(0, len(names), CHUNK):
            response = await admin.delete_topics(names[at:at + CHUNK], timeout_ms=120_000)
            failed += [(name, code) for name, code, *_ in response.topic_error_codes
                       if code not in (0, UNKNOWN_TOPIC)]
        if failed:  # aiokafka returns per-topic errors instead of raising them
            raise RuntimeError(f"{len(failed)} topics not deleted, e.g. {failed[:3]}")
        return len(names)
    finally:
        await admin.close()


async def _influx(settings: Settings, session: aiohttp.ClientSession, q: str) -> Any:
    async with session.post(
        f"{settings.influx.url}/query", data=urllib.parse.urlencode({"q": q}),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"influx {q!r}: {resp.status} {await resp.text()}")
        body = await resp.json(content_type=None)
    # InfluxDB 1.x answers a failed statement with 200 and an "error" in its result
    errors = [r["error"] for r in body.get("results", []) if "error" in r]
    if "error" in body or errors:
        raise RuntimeError(f"influx {q!r}: {body.get('error') or errors[0]}")
    return body


async def _drop_databases(settings: Settings, tags: Collection[str] | None) -> int:
    async with aiohttp.ClientSession() as session:
        shown = await _influx(settings, session, "SHOW DATABASES")
        series = shown["results"][0].get("series", [])
        names = [v[0] for s in series for v in s.get("values", [])]
        dropped = [n for n in names if tagged(n, DATABASE_TAG, tags)]
        for name in dropped:
            await _influx(settings, session, f'DROP DATABASE "{name}"')
    return len(dropped)


async def _drop_rows(settings: Settings, tags: Collection[str] | None) -> int:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        if tags is None:
            return int(await cur.execute(
                "DELETE FROM event_stats WHERE source REGEXP '^b[0-9a-f]{8}[mwo]$'"))
        sources = [f"{tag}{s}" for tag in tags for s in SOURCES]
        if not sources:
            return 0
        marks = ",".join(["%s"] * len(sources))
        return int(await cur.execute(
            f"DELETE FROM event_stats WHERE source IN ({marks})", sources))
