"""In-process CPU per event of the window engine with and without ``user_sessions``.

``Aggregator.apply`` (the fold) and ``Flusher.tick`` (rows, sessions) over synthetic
events, in memory (DictState: no RocksDB, no Kafka), so it isolates what session windows
add to the engine; the worker's whole per-event cost is ``make bench``'s.  Usage::

    python -m benchmarks.sessions_cost [events] [users] [batches per tick] [event-time µs per event]

Defaults: 480,000 events, 1,000 users, a flush every 20 batches of 500 (10,000 events:
5 s at 2,000 events/s, ten events per user per flush) and 500 µs of event time per
event (2,000 events/s in real time): 48 flushes, four minutes of wall clock, so the
sessions' update interval (60 s by default) is in its steady state.  Medians of 5
alternating runs.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable
from typing import Any

from collector.aggregates import (
    DEFINITIONS,
    EVENT_STATS,
    SEGMENT_STATS,
    USER_ACTIVITY,
    Aggregate,
    WindowSpec,
)
from collector.config.settings import WindowSettings
from collector.engine.aggregator import Aggregator
from collector.engine.flusher import Flusher
from collector.engine.processor import RawRecord
from collector.engine.specs import Specs
from collector.engine.state import DictState
from collector.sinks import Row

T0 = 1_767_225_600_000
#: the settings' defaults: windows.flush_interval_seconds, windows.session_update_seconds
FLUSH_S = WindowSettings().flush_interval_seconds
SESSION_UPDATE_S = WindowSettings().session_update_seconds


def events(n: int, users: int, step_us: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"event_id": f"e{i}", "user_id": f"u{rng.randrange(users)}",
             "type": rng.choice(["click", "view", "buy", "open"]),
             "ts": T0 + i * step_us // 1000 - rng.randrange(5000),
             "value": rng.choice([None, 1.5, 2.0]), "source": "web", "segment": "pro",
             "country": "DE"} for i in range(n)]


async def _ack() -> None:
    return None


async def _send(key: bytes, value: bytes, partition: int | None) -> Awaitable[None]:
    return _ack()


async def run(aggregates: tuple[Aggregate, ...], evs: list[dict[str, Any]],
              tick_every: int, batch: int = 500,
              update_s: float = SESSION_UPDATE_S) -> tuple[float, float]:
    """(apply, tick) CPU µs per event; the wall clock moves a flush interval per tick."""
    specs = Specs(WindowSpec.tumbling(60, 60, 3600), WindowSpec.hopping(300, 60, 60, 3600),
                  WindowSpec.sessions(1800, 60, 3600), aggregates=aggregates)
    now = [evs[-1]["ts"] / 1000 + 10]
    agg = Aggregator(DictState(), specs, clock=lambda: now[0])

    def written(rows: list[Row]) -> None:
        flusher.on_user_rows_written(rows)

    flusher = Flusher(agg, agg.state, specs, ["raw.web"], idle_timeout_s=30,
                      send_partial=_send, partials_partitions=1, add_user_rows=written,
                      clock=lambda: now[0], started_at=now[0], session_update_s=update_s)
    assigned = {("raw.web", 0)}
    records = [(RawRecord("raw.web", 0, i, None, None), e) for i, e in enumerate(evs)]
    await flusher.tick(assigned)
    t_apply = t_tick = 0.0
    for n, i in enumerate(range(0, len(records), batch)):
        began = time.process_time()
        agg.apply(records[i:i + batch])
        agg.forget_folded()
        t_apply += time.process_time() - began
        if n % tick_every == tick_every - 1:
            now[0] += FLUSH_S
            began = time.process_time()
            await flusher.tick(assigned)
            t_tick += time.process_time() - began
    return t_apply / len(records) * 1e6, t_tick / len(records) * 1e6


async def main(argv: list[str]) -> None:
    n, users, tick_every, step_us = _args(argv)
    evs = events(n, users, step_us)
    without = (EVENT_STATS, SEGMENT_STATS, USER_ACTIVITY)
    results: dict[str, list[tuple[float, float]]] = {"without": [], "with": [],
                                                     "each flush": []}
    for _ in range(5):
        results["without"].append(await run(without, evs, tick_every))
        results["with"].append(await run(DEFINITIONS, evs, tick_every))
        results["each flush"].append(await run(DEFINITIONS, evs, tick_every, update_s=0))
    totals = {}
    for name, runs in results.items():
        apply_us = statistics.median(r[0] for r in runs)
        tick_us = statistics.median(r[1] for r in runs)
        totals[name] = statistics.median(r[0] + r[1] for r in runs)
        print(f"{name:10s} user_sessions: apply {apply_us:.2f} + tick {tick_us:.2f} "
              f"= {totals[name]:.2f} µs CPU/event")
    for name, update in (("with", f"{SESSION_UPDATE_S:g} s"), ("each flush", "0 s")):
        extra = totals[name] - totals["without"]
        print(f"user_sessions (updates every {update}) adds {extra:+.2f} µs/event "
              f"({extra / totals['without']:+.1%}) [{n} events, {users} users, a tick every "
              f"{tick_every * 500} events and {FLUSH_S:g} s, {step_us} µs event time per "
              f"event]")


def _args(argv: list[str]) -> tuple[int, int, int, int]:
    defaults = [480_000, 1_000, 20, 500]
    values = [int(a) for a in argv[:4]] + defaults[len(argv[:4]):]
    return values[0], values[1], values[2], values[3]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
