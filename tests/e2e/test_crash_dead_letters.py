"""Five ``kill -9`` mid-stream, with late events in the stream: nothing is lost.

Every on-time event must be counted once (MySQL equals the oracle), and every late
event must be in the dead-letter topic at least once, whatever moment the kills hit
(a worker may be killed while it is still recovering from the previous kill).  The
stream goes on during the restarts.  The second run also wipes the state directory
after every kill (a lost volume), so each restart recovers from the changelog alone.
Printed measurements start with ``[crash]``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.sinks_io import mysql_rows
from tests.e2e.test_windows_robust import (
    SMALL,
    SMALL_ENV,
    _quiet,
    body,
    expect,
    keys_for,
    new_event,
    over_counts,
    prepare_stream,
    start,
    stream,
    until,
)
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

KILLS_AFTER_BATCH = (5, 11, 18, 26, 34)


@pytest.mark.parametrize("wipe", [False, True], ids=["keep-state", "wipe-state"])
async def test_five_kill_9_count_every_event_once_and_dead_letter_every_late_one(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path, wipe: bool
) -> None:
    tag = "k" + uuid.uuid4().hex[:8]
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db", COLLECTOR_APP__STORE="rocksdb",
                       COLLECTOR_KAFKA__COMMIT_INTERVAL="5",
                       COLLECTOR_WINDOWS__ALLOWED_LATENESS_SECONDS="5",
                       COLLECTOR_WINDOWS__EXPIRES_SECONDS="60")
    settings = settings_for(env)
    users, segments = await prepare_stream(settings, tag, 8)
    workers = [await start(worker_factory(env, "run0"))]
    starting: list[asyncio.Task[Worker]] = []
    rng = random.Random(17)
    late: list[dict[str, Any]] = []
    lo = int(time.time() * 1000) - 60_000

    async def after_batch(i: int) -> None:
        if i >= 3:  # every slot has a stream time by now: 2 events 2 min behind it
            now_ms = int(time.time() * 1000)
            batch = [new_event(rng, tag, 100_000 + len(late) + j, rng.choice(users),
                               settings.kafka.sources[j % 2], now_ms - 120_000)
                     for j in range(2)]
            late.extend(batch)
            for e in batch:
                await produce(settings, settings.kafka.raw_topic(e["source"]),
                              [(e["user_id"].encode(), body(e))])
        if i in KILLS_AFTER_BATCH:
            workers[-1].stop(signal.SIGKILL)  # ready or still recovering: any moment
            if wipe:  # the volume is gone: recover from the changelog topics alone
                shutil.rmtree(env["COLLECTOR_APP__DATADIR"], ignore_errors=True)
            worker = worker_factory(env, f"run{len(workers)}")
            workers.append(worker)
            starting.append(asyncio.get_running_loop().create_task(start(worker)))

    events = await stream(settings, tag, users, batches=42, pace_s=0.35, rng=rng,
                          after_batch=after_batch)
    for task in starting[:-1]:
        try:
            await task
        except AssertionError:
            pass  # killed before it was ready: that was the point
    last = await starting[-1]
    expected = expect(events, segments, **SMALL)
    hi = int(time.time() * 1000) + 60_000

    async def all_final() -> tuple[bool, Any]:
        rows = await mysql_rows(settings, lo, hi, keys_for(tag))
        done = expected.keys() <= rows.keys() and all(f for _, f in rows.values())
        return done and (await _quiet(last))[0], rows if done else sorted(
            expected.keys() - rows.keys())[:5]

    rows = await until(all_final, 90, "every window final after five kills")
    over, wrong = over_counts(rows, expected)
    want_dead = {e["event_id"] for e in late}
    records = await read_until(
        settings, [settings.kafka.deadletter_topic],
        lambda recs: want_dead <= {orjson.loads(orjson.loads(r.value)["payload"])["event_id"]
                                   for r in recs}, limit_s=30)
    dead = [orjson.loads(r.value) for r in records]
    dead_ids = Counter(orjson.loads(d["payload"])["event_id"] for d in dead)
    identities = Counter((d["topic"], d["partition"], d["offset"], d["index"]) for d in dead)
    repeats = sum(n - 1 for n in identities.values())
    state = "state wiped each time" if wipe else "state kept"
    print(f"\n[crash] {len(KILLS_AFTER_BATCH)} x kill -9 ({state}): {len(events)} on-time events, "
          f"over-count per table {over}; {len(late)} late events, {len(set(dead_ids))} of "
          f"them dead-lettered, {repeats} repeated dead letters (same identity)", flush=True)
    assert not wrong, wrong[:10]
    assert sum(over.values()) == 0, over
    assert {d["reason"] for d in dead} == {"late"}
    assert set(dead_ids) == want_dead  # every late event, and no on-time one
