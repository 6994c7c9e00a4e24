"""Long commands report progress as they go (the CLI draws it with rich)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli.produce import produce
from collector.config import Settings, settings_for_env
from collector.db import migrate
from collector.db.seed import seed_users
from collector.sources.generator import GeneratorConfig
from tests.e2e.workers import isolated_env

pytestmark = pytest.mark.integration


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
