"""Shutdown while the broker is unreachable: SIGTERM must stop the worker in bounded time.

Faust flushes its producer at shutdown and aiokafka's ``stop()`` waits for the same
batches; with the broker gone both wait ``producer_request_timeout`` (20 min), so the
worker seemed to ignore SIGTERM.  Uses a throwaway Kafka broker, never the shared one.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.workers import Worker, isolated_env
from tests.private_kafka import private_broker

pytestmark = pytest.mark.e2e

FLUSH_TIMEOUT = 3.0


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with private_broker(tmp_path / "kafka") as broker:
        yield broker


async def _topics(settings: Settings) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            await ensure_topics(settings)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.mark.parametrize("producer", ["busy", "idle"])
async def test_sigterm_with_the_broker_gone_exits_in_bounded_time(
    stack: Settings, own_broker: tuple[str, subprocess.Popen[bytes]], tmp_path: Path,
    producer: str,
) -> None:
    """busy: a flush tick after the broker died left close marks in the producer;
    idle: no tick ran (60 s interval), nothing to flush, and the consumer's stop still
    hangs on the dead broker (it did, past 18 s, before the exit was armed for it)."""
    hostport, broker = own_broker
    env = isolated_env(tmp_path, COLLECTOR_KAFKA__BOOTSTRAP_SERVERS=hostport,
                       COLLECTOR_KAFKA__SHUTDOWN_FLUSH_TIMEOUT=str(FLUSH_TIMEOUT),
                       COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS=(
                           "1" if producer == "busy" else "60"))
    await _topics(settings_for(env))
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(90)
        await asyncio.sleep(2)
        broker.kill()
        await asyncio.sleep(3)  # busy: flush ticks have sent close marks into the void
        began = time.monotonic()
        code = worker.stop(signal.SIGTERM, timeout=6 * FLUSH_TIMEOUT)
        took = time.monotonic() - began
    finally:
        worker.stop(signal.SIGKILL)
    print(f"\n[shutdown] SIGTERM with the broker gone: exit code {code} after {took:.1f}s")
    assert code != -signal.SIGKILL, "the worker ignored SIGTERM and had to be killed"
    assert ("producer flush gave up" in worker.text()) == (producer == "busy")

