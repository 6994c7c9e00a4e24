"""The latency phase alone, at a fixed offered rate: ``python -m benchmarks.latency_probe
[events/s] [seconds] [KEY=VALUE ...]`` (defaults 4000 and 40; ``KEY=VALUE`` are extra
``COLLECTOR_*`` settings for the worker, e.g. ``COLLECTOR_KAFKA__FETCH_MAX_WAIT_MS=1500``).

``make bench`` offers half the rate its pipeline run just measured, so its latency
phase moves with the machine; this one offers the same rate every run, which is what
an A/B of a latency change needs.  A 20,000-event pipeline run warms the worker first
(caches, RocksDB, the first windows).  Prints p50/p99/max and writes the result, with
the worker's consumed-events counter sampled every 0.25 s, to
``.local/bench/probe-<tag>/result.json``; the worker log is next to it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.cleanup import drop_runs
from benchmarks.common import isolated_env, new_tag, produce, settings_for
from benchmarks.latency import run_latency
from benchmarks.pipeline import PipelineWorker, event_stats_count, influx_create_db, warm_cache

USERS = 10_000
WARM_EVENTS = 20_000


async def probe(rate: float, seconds: float, extra: dict[str, str]) -> dict[str, Any]:
    tag = new_tag()
    workdir = Path(".local/bench") / f"probe-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = isolated_env(tag, workdir, **extra)
    settings = settings_for(env)
    summary = produce(env, WARM_EVENTS, 1, USERS)["produced"]
    await influx_create_db(settings)
    await warm_cache(settings, USERS)
    worker = PipelineWorker(settings, env, workdir / "pipeline.log")
    samples: list[tuple[float, float]] = []
    try:
        await worker.start()
        await worker.measure(summary["events"], summary["valid"],
                             sum(summary["dead_lettered"].values()))
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                m = await worker.metrics()
                samples.append((time.time(), m.get("collector_events_consumed", 0.0)))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())

        async def visible() -> int:
            return await event_stats_count(settings)

        try:
            result = await run_latency(settings, visible, rate, seconds, USERS)
        finally:
            done.set()
            await sampler
    finally:
        await worker.stop()
        await drop_runs(settings, {tag})
    result["consumed_samples"] = samples
    result["tag"] = tag
    (workdir / "result.json").write_text(json.dumps(result))
    return result


def main(argv: list[str]) -> None:
    rate = float(argv[0]) if argv else 4000.0
    seconds = float(argv[1]) if len(argv) > 1 else 40.0
    extra = dict(arg.split("=", 1) for arg in argv[2:])
    result = asyncio.run(probe(rate, seconds, extra))
    print(f"{result['tag']}: offered {rate:,.0f} events/s for {seconds:.0f} s: "
          f"p50 {result['p50_s']} s, p99 {result['p99_s']} s, max {result['max_s']} s, "
          f"not visible {result['not_visible']}")


if __name__ == "__main__":
    main(sys.argv[1:])
