"""``collector reprocess --from TIME`` rebuilds damaged rows beside a running worker.

A worker aggregates two bursts of events three seconds apart; then every row in MySQL
is damaged (count + 1000).  A reprocess from between the bursts must put back exactly
the rows of the windows starting at or after that time, leave the earlier windows
alone (it re-read them only in part), and delete its temporary topics.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import Settings
from collector.db import connect
from collector.kafka.clients import client_kwargs
from collector.ops.times import iso
from tests.e2e.kafka_io import settings_for
from tests.e2e.sinks_io import mysql_rows
from tests.e2e.test_windows_robust import (
    SMALL,
    SMALL_ENV,
    expect,
    keys_for,
    mysql_check,
    prepare_stream,
    start,
    stream,
    until,
)
from tests.e2e.workers import ROOT, Worker, isolated_env

pytestmark = pytest.mark.e2e

COLLECTOR = Path(sys.executable).with_name("collector")
DAMAGE = 1000


async def damage(settings: Settings, tag: str) -> None:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for table, column in (("event_stats", "source"), ("user_activity", "user_id"),
                              ("segment_stats", "segment")):
            await cur.execute(f"UPDATE {table} SET count = count + %s WHERE {column} LIKE %s",
                              (DAMAGE, tag + "%"))


async def topics_of(settings: Settings, prefix: str) -> list[str]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if t.startswith(prefix)]
    finally:
        await admin.close()


async def test_reprocess_rebuilds_windows_from_the_time_given(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "p" + uuid.uuid4().hex[:8]
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db")
    settings = settings_for(env)
    users, segments = await prepare_stream(settings, tag, 4)
    await start(worker_factory(env, "live"))
    rng = random.Random(5)
    lo = int(time.time() * 1000) - 60_000
    before = await stream(settings, tag, users, batches=6, pace_s=0.3, rng=rng)
    await asyncio.sleep(3)
    from_ms = int(time.time() * 1000)
    await asyncio.sleep(1)
    after = await stream(settings, tag, users, batches=6, pace_s=0.3, rng=rng,
                         first_id=len(before))
    expected = expect(before + after, segments, **SMALL)
    hi = int(time.time() * 1000) + 60_000
    await until(lambda: mysql_check(settings, tag, expected, lo, hi), 60, "final rows")
    await damage(settings, tag)

    proc = await asyncio.to_thread(
        subprocess.run, [str(COLLECTOR), "reprocess", "--from", iso(from_ms), "--json",
                         "--timeout", "240"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    print(f"\n[reprocess] {summary}", flush=True)
    aligned = from_ms // 1000 * 1000
    assert summary["from"] == iso(aligned)
    assert summary["messages"] == len(before) + len(after)  # read from --from - skew
    assert summary["events"]["consumed"] == len(before) + len(after)
    rebuilt = {i for i in expected if i[1] >= aligned}
    assert rebuilt and len(rebuilt) < len(expected)
    assert summary["rows_written"]["mysql"] >= len(rebuilt)

    rows = await mysql_rows(settings, lo, hi, keys_for(tag))
    assert rows.keys() == expected.keys()
    for ident, want in expected.items():
        got, final = rows[ident]
        if ident in rebuilt:
            assert final and got["count"] == want["count"], (ident, got, want)
        else:  # started before --from: re-read in part, so never written
            assert got["count"] == want["count"] + DAMAGE, (ident, got, want)
    assert await topics_of(settings, summary["app_id"]) == []
