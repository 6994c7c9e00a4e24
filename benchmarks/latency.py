"""End-to-end latency at a steady offered load, from produce time to visible in MySQL.

Method (curve matching): a paced producer in this process sends synthetic events at a
constant rate and records, per message, the wall time of ``send()`` and the running
count of *valid* events sent so far (the generator knows which slots are malformed).
A poller reads this run's ``event_stats`` rows in MySQL every ``poll_s`` and records the
running count of events visible there.  The k-th valid event sent is counted as
visible at the first poll whose visible count reaches k; its latency is that poll time
minus its send time.  That is exact for a FIFO pipeline and otherwise an unbiased
estimate of the horizontal distance between the two curves, which is what an operator
sees; the poll adds at most ``poll_s``.  Events never visible before the deadline are
reported as ``not_visible``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.report import summarize
from collector.config import Settings
from collector.devtools.generator import DEFAULT_TYPES, Generator, GeneratorConfig
from collector.kafka.clients import client_kwargs


def match_curves(sent: list[tuple[float, int]], visible: list[tuple[float, int]]
                 ) -> tuple[list[float], int]:
    """Latency of each valid event, and how many never became visible.

    ``sent``: (time, cumulative valid events sent) per message, non-decreasing.
    ``visible``: (time, cumulative events visible) per poll, non-decreasing.
    """
    latencies: list[float] = []
    j = 0
    prev = 0
    missing = 0
    for sent_at, cumulative in sent:
        for k in range(prev + 1, cumulative + 1):
            while j < len(visible) and visible[j][1] < k:
                j += 1
            if j == len(visible):
                missing += 1
            else:
                latencies.append(max(visible[j][0] - sent_at, 0.0))
        prev = max(prev, cumulative)
    return latencies, missing


async def run_latency(
    settings: Settings, count_visible: Callable[[], Awaitable[int]], rate: float,
    seconds: float, users: int, batch: int = 1, poll_s: float = 0.1,
    drain_s: float = 60.0,
) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds``; measure produce -> MySQL latency."""
    total = max(int(rate * seconds), 1)
    config = GeneratorConfig(
        events=total, users=users, types=DEFAULT_TYPES, sources=tuple(settings.kafka.sources),
        malformed_share=0.01, batch=batch, seed=int(time.time()) % 100_000,
        max_message_bytes=settings.ingest.max_message_bytes,
    )
    generator = Generator(config)
    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5, acks="all",
                                max_request_size=max(1_048_576,
                                                     settings.ingest.max_message_bytes * 4))
    await producer.start()
    baseline = await count_visible()
    sent: list[tuple[float, int]] = []
    visible: list[tuple[float, int]] = []
    done_sending = asyncio.Event()

    async def poll() -> None:
        deadline = None
        while True:
            now = time.time()
            seen = await count_visible() - baseline
            visible.append((time.time(), seen))
            if done_sending.is_set():
                deadline = deadline or now + drain_s
                if seen >= generator.expected.valid or now > deadline:
                    return
            await asyncio.sleep(poll_s)

    poller = asyncio.create_task(poll())
    pending: list[asyncio.Future[Any]] = []
    slots = 0
    started = time.perf_counter()
    wall0 = time.time()
    try:
        for message in generator:
            ahead = slots / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            topic = settings.kafka.raw_topic(message.source)
            pending.append(await producer.send(topic, message.value, key=message.key))
            sent.append((time.time(), generator.expected.valid))
            slots += message.slots
            if len(pending) >= 2000:
                done = [f for f in pending if f.done()]
                pending = [f for f in pending if not f.done()]
                await asyncio.gather(*done)
        await asyncio.gather(*pending)
        send_seconds = time.time() - wall0
        done_sending.set()
        await poller
    finally:
        poller.cancel()
        await producer.stop()
    latencies, missing = match_curves(sent, visible)
    stats = summarize(latencies)
    curve = sample_curve(sent, visible, wall0)
    return {
        "offered_events_per_s": round(rate, 1),
        "achieved_send_events_per_s": round(total / send_seconds, 1) if send_seconds else 0,
        "seconds": round(send_seconds, 2),
        "events": total,
        "valid": generator.expected.valid,
        "not_visible": missing,
        "poll_s": poll_s,
        "flush_interval_s": settings.windows.flush_interval_seconds,
        "p50_s": stats["p50"],
        "p99_s": stats["p99"],
        "max_s": stats["max"],
        "mean_s": stats["mean"],
        "curve": curve,
    }


def sample_curve(sent: list[tuple[float, int]], visible: list[tuple[float, int]],
                 t0: float, step: float = 1.0) -> list[list[float]]:
    """[seconds since start, valid events sent, events visible] once per ``step``."""
    end = max(sent[-1][0] if sent else t0, visible[-1][0] if visible else t0)
    out: list[list[float]] = []
    i = j = 0
    s_count = v_count = 0
    t = t0
    while t <= end + step:
        while i < len(sent) and sent[i][0] <= t:
            s_count = sent[i][1]
            i += 1
        while j < len(visible) and visible[j][0] <= t:
            v_count = visible[j][1]
            j += 1
        out.append([round(t - t0, 1), s_count, v_count])
        t += step
    return out
