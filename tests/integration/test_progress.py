"""Long commands report progress as they go (the CLI draws it with rich)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli.produce import produce
from collector.config import Settings, settings_for_env
from collector.db import migrate
from collector.db.seed import seed_users
from collector.devtools.generator import GeneratorConfig
from tests.e2e.workers import ROOT, isolated_env

pytestmark = pytest.mark.integration

COLLECTOR = Path(sys.executable).with_name("collector")


async def test_produce_reports_every_500_events_and_the_end(
    stack: Settings, tmp_path: Path
) -> None:
    settings = settings_for_env(isolated_env(tmp_path))
    calls: list[tuple[int, int]] = []
    config = GeneratorConfig(events=1200, sources=tuple(settings.kafka.sources))
    summary = await produce(settings, config, progress=lambda d, t: calls.append((d, t)))
    assert summary["produced"]["events"] == 1200
    assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]


async def test_seed_reports_each_batch(stack: Settings) -> None:
    await migrate(stack)
    calls: list[tuple[int, int]] = []
    # the demo users `make run` seeds (same count and seed): nothing changes but updated_at
    assert await seed_users(stack, 1000, 7, progress=lambda d, t: calls.append((d, t))) == 1000
    assert calls == [(1000, 1000)]


def test_produce_reports_into_a_log_file_as_the_demo_runs_it(
    stack: Settings, tmp_path: Path
) -> None:
    """``make run`` sends the producer's stdout to .local/demo-producer.log: it must not
    stay empty for the hours the demo producer runs."""
    demo = (ROOT / "deploy" / "local" / "run-demo.sh").read_text()
    assert "--report-every 10" in demo and "> .local/demo-producer.log" in demo
    log = tmp_path / "demo-producer.log"
    env = {**os.environ, **isolated_env(tmp_path)}
    with log.open("w") as out:
        proc = subprocess.run(
            [str(COLLECTOR), "produce", "--events", "2400", "--rate", "1000",
             "--report-every", "0.5", "--json"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=60)
    assert proc.returncode == 0, log.read_text()
    # aiokafka may warn on stderr while new topics elect leaders: JSON lines only
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{")]
    reports, summary = lines[:-1], lines[-1]
    assert len(reports) >= 3, lines
    assert all(0 < r["events"] <= 2400 and "events_per_second" in r for r in reports)
    assert [r["events"] for r in reports] == sorted(r["events"] for r in reports)
    assert summary["produced"]["events"] == 2400


async def test_produce_with_a_fixed_event_time_stamps_every_event_just_before_it(
    stack: Settings, tmp_path: Path
) -> None:
    """The benchmarks' ``--event-time-ms``: events of a run of any length span 2 s."""
    import orjson

    from benchmarks.common import one_window_event_time
    from tests.e2e.kafka_io import read_until

    settings = settings_for_env(isolated_env(tmp_path))
    at = one_window_event_time(1_699_999_980_500)  # 0.5 s into a minute: the one before
    assert at == 1_699_999_979_999 and at // 60_000 == (at - 2_000) // 60_000
    assert one_window_event_time(1_700_000_030_000) == 1_700_000_030_000
    config = GeneratorConfig(events=600, sources=tuple(settings.kafka.sources))
    await produce(settings, config, event_time_ms=at)
    topics = [settings.kafka.raw_topic(s) for s in settings.kafka.sources]
    records = await read_until(settings, topics, lambda got: len(got) >= 600)
    stamps = [orjson.loads(r.value)["ts"] for r in records]
    assert len(stamps) == 600
    valid = [ts for ts in stamps if ts < at + 60_000]  # malformed_share is 0 here
    assert valid == stamps and all(at - 2_000 <= ts <= at for ts in stamps)
