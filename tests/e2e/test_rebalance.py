"""A second worker joins mid-stream while the first one is busy.

Through the stream (``kafka.direct_delivery=false``) this is the case the lean hand-off
(``collector/adapters/transport.py``) must not break: with a 4-message stream buffer
nearly every delivery waits for room, so the rebalance arrives while a delivery is
blocked, and only ``wait_first`` against ``suspend_flow`` lets it through.  With direct
delivery (the default) the rebalance arrives while a fetched batch is being processed
or dropped.  Either way every window in MySQL must equal the oracle afterwards: nothing
lost in the move, nothing counted twice (partitions change owner with uncommitted
offsets).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from collector.config import Settings
from tests.e2e.kafka_io import settings_for
from tests.e2e.sinks_io import mysql_rows
from tests.e2e.test_windows_robust import (
    SMALL,
    SMALL_ENV,
    _quiet,
    expect,
    keys_for,
    metric,
    metrics,
    over_counts,
    prepare_stream,
    report,
    start,
    stream,
    until,
)
from tests.e2e.workers import Worker, free_port, isolated_env

pytestmark = pytest.mark.e2e

WAITED = re.compile(r"lean hand-off: (\d+) messages delivered, (\d+) waited")


@pytest.mark.parametrize("direct", [False, True], ids=["stream", "direct"])
async def test_worker_joins_mid_stream(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path, direct: bool
) -> None:
    tag = "r" + uuid.uuid4().hex[:8]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    env_a = isolated_env(tmp_path / "a", **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                         COLLECTOR_INFLUX__DATABASE=f"{tag}db",
                         COLLECTOR_KAFKA__STREAM_BUFFER_MAXSIZE="4",
                         COLLECTOR_KAFKA__DIRECT_DELIVERY=str(direct).lower())
    env_b = {**env_a, "COLLECTOR_WEB__PORT": str(free_port()),
             "COLLECTOR_APP__DATADIR": str(tmp_path / "b" / "faust")}
    settings = settings_for(env_a)
    users, segments = await prepare_stream(settings, tag, 24)
    first = await start(worker_factory(env_a, "first"))
    second = worker_factory(env_b, "second")
    lo = int(time.time() * 1000) - 60_000
    joining: asyncio.Task[Worker] | None = None

    async def join(i: int) -> None:
        nonlocal joining
        if i == 6:
            joining = asyncio.get_running_loop().create_task(start(second))

    events = await stream(settings, tag, users, batches=30, pace_s=0.25,
                          rng=random.Random(11), after_batch=join)
    assert joining is not None
    await joining
    hi = int(time.time() * 1000) + 60_000
    expected = expect(events, segments, **SMALL)

    async def all_final() -> tuple[bool, object]:
        # final means "closed at least once": a window that closed while its partition
        # moved may be written again (a higher revision) once the new owner has replayed
        # the uncommitted input, so wait for the oracle's values, not just for final
        rows = await mysql_rows(settings, lo, hi, keys_for(tag))
        done = expected.keys() <= rows.keys() and all(f for _, f in rows.values())
        exact = done and not over_counts(rows, expected)[1]
        quiet = (await _quiet(first))[0] and (await _quiet(second))[0]
        if not done:
            return False, sorted(expected.keys() - rows.keys())[:5]
        return exact and quiet, (over_counts(rows, expected)[1][:5], rows)

    await until(all_final, 90, "every window final and exact after the rebalance")
    rows = await mysql_rows(settings, lo, hi, keys_for(tag))
    over, wrong = over_counts(rows, expected)
    consumed = [metric(await metrics(w), "collector_events_consumed_total") or 0
                for w in (first, second)]
    first.stop()
    second.stop()
    counts = [WAITED.findall(w.text()) for w in (first, second)]
    mode = "direct" if direct else "stream, full buffer"
    report(f"rebalance ({mode}): {len(events)} events, consumed per worker "
           f"{consumed}, hand-off (delivered, waited) per worker {counts}; over-count "
           f"{over}")
    assert all(c > 0 for c in consumed), "the second worker never got partitions"
    assert sum(consumed) >= len(events)
    assert not wrong, wrong[:10]
    assert sum(over.values()) == 0, over
    delivered, waited = (sum(int(x) for c in counts for x, _ in c),
                         sum(int(y) for c in counts for _, y in c))
    assert delivered >= len(events), counts
    if not direct:  # the slow path ran: deliveries waited for room, and were still
        assert waited > 0, counts  # rebalanced through (direct: only the partials wait)
