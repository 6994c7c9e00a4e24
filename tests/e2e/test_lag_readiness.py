"""Consumer lag and the commit-stall readiness check on a real worker and broker.

A backlog is produced before the worker starts.  While the worker works it off, the
lag it reports must be positive and its high watermarks must add up to the backlog
exactly (the dev broker's ListOffsets answer is far lower, so this proves they come
from fetch responses).  With a stall threshold far below the commit interval,
``/readyz`` must also say "commits stalled" while there is lag, and be ready again once
the worker has caught up.
"""

from __future__ import annotations

import json
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, settings_for
from tests.e2e.tools import get
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

BACKLOG = 20_000


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    try:
        return 200, json.loads(get(f"{base}/readyz"))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def watch_catch_up(
    base: str, topic: str, partitions: int, worker: Worker
) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Poll until the backlog is consumed: the largest lag seen, stall reasons, partitions."""
    max_lag, last, web = 0, {}, []
    stalled_reasons: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            last = json.loads(get(f"{base}/api/v1/summary"))
        except OSError:  # web server not up yet
            time.sleep(0.2)
            continue
        max_lag = max(max_lag, last["lag"]["total"])
        status, body = readyz(base)
        if status == 503:
            stalled_reasons += [r for r in body["reasons"] if r.startswith("commits stalled")]
        web = [p for p in last["lag"]["partitions"] if p["topic"] == topic]
        caught_up = last["totals"]["consumed"] >= BACKLOG and last["lag"]["total"] == 0
        if caught_up and len(web) == partitions:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"did not catch up: {last}\n{worker.text()[-3000:]}")
    return max_lag, stalled_reasons, web


def wait_ready(base: str, limit_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    """/readyz once it answers 200 (the next lag sample clears the stall), or the last."""
    status, body = readyz(base)
    deadline = time.monotonic() + limit_s
    while status != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
        status, body = readyz(base)
    return status, body


async def test_lag_from_fetch_highwaters_and_stall_readiness(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, COLLECTOR_WEB__OBSERVE_INTERVAL_SECONDS="0.2",
                       COLLECTOR_WEB__READY_STALL_SECONDS="0.3")
    settings = settings_for(env)
    await ensure_topics(settings)
    topic = settings.kafka.raw_topic("web")
    now = int(time.time() * 1000)
    await produce(settings, topic, [
        (f"u{i % 50:05d}".encode(), orjson.dumps(
            {"event_id": f"e{i}", "user_id": f"u{i % 50:05d}", "type": "click", "ts": now}))
        for i in range(BACKLOG)
    ])
    worker = worker_factory(env).start()
    base = f"http://127.0.0.1:{worker.port}"

    max_lag, stalled_reasons, web = watch_catch_up(base, topic, settings.kafka.partitions,
                                                   worker)
    assert max_lag > 0, "lag was never seen while the backlog was worked off"
    assert sum(p["highwater"] for p in web) == BACKLOG
    assert all(p["committed"] == p["highwater"] for p in web)
    assert stalled_reasons and f"{topic}[" in stalled_reasons[0]
    status, body = wait_ready(base)
    assert status == 200 and body["stalled_partitions"] == [], body
