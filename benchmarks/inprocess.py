"""CPU per event of the processor and the combiner in process: no Kafka, no stores.

``python -m benchmarks.inprocess [--n 100000] [--repeat 3] [--profile]`` decodes,
validates, enriches (a constant profile, no Redis), aggregates into a ``DictState`` and
forwards into nothing the generator's single-mode messages, in batches of 900 (about
what the worker's fetches hold), and prints µs of process CPU per message, best and
median of ``--repeat`` runs.  What it leaves out (RocksDB, changelog, producer, Redis,
sinks, Faust's consumer) is what the stack benchmark adds; what it keeps is our own
per-event Python, measured without the noise of a shared stack.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from collections.abc import Awaitable, Collection
from typing import Any

from prometheus_client import CollectorRegistry

from collector.config.loader import settings_for_env
from collector.devtools.generator import Generator, GeneratorConfig
from collector.engine.aggregator import Aggregator
from collector.engine.processor import RawProcessor, RawRecord, home_partition
from collector.engine.specs import Specs
from collector.engine.state import DictState
from collector.enrichment import Outcome, UserProfile
from collector.observability import Metrics

BATCH = 900
PARTITIONS = 4


class _Enricher:
    async def enrich_many(self, ids: Collection[str]) -> dict[str, tuple[UserProfile, Outcome]]:
        return {u: (UserProfile(u, "smb", "DE", "pro"), Outcome.HIT) for u in ids}


class _Batches:
    def add(self, key: bytes, value: bytes) -> None:
        pass

    async def submit(self) -> list[Awaitable[Any]]:
        return []


class _Output:
    async def send(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def batches(self, topic: str) -> _Batches:
        return _Batches()


def records(n: int, settings: Any) -> list[RawRecord]:
    """The generator's messages (10,000 users, 1% malformed) on 4 partitions by key."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for m in Generator(GeneratorConfig(events=n, users=10_000, malformed_share=0.01)):
        topic = settings.kafka.raw_topic(m.source)
        partition = home_partition(m.key.decode(), PARTITIONS) if m.key else 0
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        out.append(RawRecord(topic, partition, offset, m.key, m.value))
    return out


async def one_run(recs: list[RawRecord], settings: Any, profile: bool) -> float:
    aggregator = Aggregator(DictState(), Specs.from_settings(settings))
    processor = RawProcessor(settings, _Enricher(), Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                             aggregator=aggregator)
    out = _Output()
    prof = cProfile.Profile() if profile else None
    began = time.process_time()
    if prof:
        prof.enable()
    for i in range(0, len(recs), BATCH):
        await processor.process_safely(recs[i:i + BATCH], out)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    return (time.process_time() - began) / len(recs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one run")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a COLLECTOR_* setting, e.g. a configured aggregate's (repeatable)")
    args = parser.parse_args()
    env = {"COLLECTOR_KAFKA__SOURCES": "mobile,web,openapi"}
    env.update(item.split("=", 1) for item in args.env)
    settings = settings_for_env(env)
    recs = records(args.n, settings)
    runs = [asyncio.run(one_run(recs, settings, args.profile)) for _ in range(args.repeat)]
    print(f"in process, {args.n:,} messages: {min(runs):.2f} µs CPU/message best, "
          f"{statistics.median(runs):.2f} median of {len(runs)} "
          f"({', '.join(f'{r:.2f}' for r in runs)})")


if __name__ == "__main__":
    main()
