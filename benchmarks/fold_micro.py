"""In-process microbenchmark of the fold: ``Aggregator.apply`` per event, no Kafka.

What a configured aggregate costs (and that none costs nothing): declare aggregates
with ``COLLECTOR_AGGREGATES__…`` as the worker would, then

    PYTHONPATH=. .venv/bin/python -m benchmarks.fold_micro [--events 20000] [--repeat 7]

Each repeat folds the same enriched events (8 partitions, 2 sources, 500 users, a
``properties.plan``) in batches of 500 into a fresh in-memory state, timed with
``time.thread_time`` (CPU time: the machine may be shared); the best and the median
repeat are printed in µs per event.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from collector.config import load_settings
from collector.engine.aggregator import Aggregator, Specs
from collector.engine.processor import RawRecord
from collector.engine.state import DictState

T0 = 1_767_225_600_000


def batches(n: int, size: int = 500, seed: int = 1) -> list[list[tuple[RawRecord, dict[str, Any]]]]:
    rng = random.Random(seed)
    out: list[list[tuple[RawRecord, dict[str, Any]]]] = []
    offsets: dict[tuple[str, int], int] = {}
    batch: list[tuple[RawRecord, dict[str, Any]]] = []
    for i in range(n):
        user = f"u{rng.randrange(500)}"
        topic, part = rng.choice(["raw.web", "raw.mobile"]), rng.randrange(8)
        offsets[(topic, part)] = offset = offsets.get((topic, part), -1) + 1
        event = {"event_id": f"e{i}", "user_id": user, "type": rng.choice(["a", "b", "c"]),
                 "ts": T0 + i * 10 + rng.randrange(-5000, 5000),
                 "value": rng.choice([None, 1.5, 2.0]), "device_id": None,
                 "properties": {"plan": rng.choice(["free", "pro"])},
                 "source": topic[4:], "segment": "s1", "country": "DE", "plan": "pro"}
        batch.append((RawRecord(topic, part, offset, None, None), event))
        if len(batch) == size:
            out.append(batch)
            batch = []
    return out + ([batch] if batch else [])


def run(n: int, repeat: int) -> list[float]:
    specs = Specs.from_settings(load_settings())
    data = batches(n)
    clock = (T0 + n * 10 + 600_000) / 1000
    times = []
    for _ in range(repeat):
        agg = Aggregator(DictState(), specs, clock=lambda: clock)
        start = time.thread_time()
        for batch in data:
            agg.apply(batch)
        times.append((time.thread_time() - start) / n * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    specs = Specs.from_settings(load_settings())
    times = run(args.events, args.repeat)
    print(f"aggregates: {', '.join(a.name for a in specs.aggregates)}")
    print(f"apply: best {min(times):.2f} µs/event, median {statistics.median(times):.2f} "
          f"µs/event ({args.repeat} x {args.events} events)")


if __name__ == "__main__":
    main()
