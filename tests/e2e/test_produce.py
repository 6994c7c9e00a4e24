"""``collector produce`` against a real worker: its summary predicts the worker's counters.

The generator knows what each slot must become (valid, or dead-lettered with a reason);
the worker's ``/metrics`` must show exactly that, per reason and per source, for single
events and for batch envelopes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.config import Settings
from collector.devtools.generator import MALFORMED_KINDS
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.workers import ROOT, Worker, isolated_env

pytestmark = pytest.mark.e2e

COLLECTOR = Path(sys.executable).with_name("collector")
EVENTS = 600

Counts = dict[tuple[str, ...], int]


@pytest.fixture(scope="module")
def served(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("produce")
    env = isolated_env(tmp)
    asyncio.run(ensure_topics(settings_for(env)))
    worker = Worker(env, tmp / "worker.log").start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


async def counters(port: int) -> dict[str, Counts]:
    """The ingest/validation counters of the worker, by label values."""
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    wanted = {
        "collector_events_consumed_total": ("source",),
        "collector_events_valid_total": ("source",),
        "collector_events_dead_lettered_total": ("source", "reason"),
        "collector_raw_messages_total": ("source",),
    }
    out: dict[str, Counts] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out[s.name][tuple(s.labels[k] for k in wanted[s.name])] = int(s.value)
    return out


def delta(after: dict[str, Counts], before: dict[str, Counts]) -> dict[str, Counts]:
    return {
        name: {k: v - before[name].get(k, 0) for k, v in values.items()
               if v - before[name].get(k, 0)}
        for name, values in after.items()
    }


def total(counts: Counts) -> int:
    return sum(counts.values())


def run_produce(worker: Worker, *args: str) -> dict[str, Any]:
    env = {**os.environ, **worker.env}
    proc = subprocess.run(
        [str(COLLECTOR), "produce", *args, "--json"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints one line"
    summary: dict[str, Any] = json.loads(lines[0])
    return summary


@pytest.mark.parametrize("batch", [1, 20], ids=["single-events", "envelopes"])
async def test_produce_summary_matches_worker_metrics(served: Worker, batch: int) -> None:
    before = await counters(served.port)
    summary = run_produce(served, "--events", str(EVENTS), "--malformed", "0.05",
                          "--batch", str(batch), "--seed", "3")
    produced, expected = summary["produced"], summary["expected"]
    assert produced["events"] == EVENTS
    assert produced["valid"] + sum(produced["dead_lettered"].values()) == EVENTS
    assert expected["valid"] == produced["valid"]
    assert expected["dead_lettered"] == produced["dead_lettered"]
    assert set(expected["dead_lettered"]) <= set(MALFORMED_KINDS.values())
    assert 0 < sum(expected["dead_lettered"].values()) < EVENTS * 0.15, "about 5% malformed"
    if batch == 1:
        assert produced["messages"] == EVENTS
    else:
        assert produced["messages"] < EVENTS / 5, "envelopes hold many events"

    deadline = time.monotonic() + 40
    while True:
        got = delta(await counters(served.port), before)
        # consumed is counted before enrichment, valid after it: wait for both
        if min(total(got["collector_events_consumed_total"]),
               total(got["collector_events_valid_total"])
               + total(got["collector_events_dead_lettered_total"])) >= EVENTS:
            break
        assert time.monotonic() < deadline, f"worker consumed {got} of {EVENTS}"
        await asyncio.sleep(0.25)

    consumed = got["collector_events_consumed_total"]
    valid = got["collector_events_valid_total"]
    dead = got["collector_events_dead_lettered_total"]
    assert total(consumed) == EVENTS
    assert total(got["collector_raw_messages_total"]) == produced["messages"]
    assert {s: n for (s,), n in valid.items()} == produced["valid_by_source"]
    by_reason: dict[str, int] = {}
    for (_, reason), n in dead.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    assert by_reason == expected["dead_lettered"]
    for (source,), n in consumed.items():  # valid + dead-lettered == consumed, per source
        here = sum(m for (s, _), m in dead.items() if s == source)
        assert valid.get((source,), 0) + here == n, source
