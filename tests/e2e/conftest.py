"""Fixtures for tests that run real worker processes against the local stack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import load_settings
from collector.kafka.clients import client_kwargs
from tests.e2e.workers import APP_IDS, Worker, isolated_env


@pytest.fixture
def worker_factory(migrated: object, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Build workers with isolated topics; every one started is stopped at teardown.

    On the migrated stack: a worker does not apply migrations (``collector db migrate``
    does), and a test run first on a fresh database saw its sink "unavailable" for good."""
    started: list[Worker] = []

    def make(env: dict[str, str] | None = None, name: str = "worker") -> Worker:
        chosen = env if env is not None else isolated_env(tmp_path)
        worker = Worker(chosen, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session", autouse=True)
def drop_test_topics() -> Iterator[None]:
    """Delete the topics of this run's isolated apps at its end: left behind, a few
    thousand runs' partitions made the local broker take over 30 s to start."""
    yield
    if APP_IDS:
        asyncio.run(asyncio.wait_for(_drop(tuple(APP_IDS)), 60))


async def _drop(apps: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(**client_kwargs(load_settings()))
    try:
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(_prefixes(apps))]
        for at in range(0, len(names), 200):
            await admin.delete_topics(names[at:at + 200])
    except Exception as exc:  # best effort: a stopped stack has nothing to clean
        print(f"[topics] not deleted: {exc!r}")
    finally:
        await admin.close()


def _prefixes(apps: tuple[str, ...]) -> tuple[str, ...]:
    """An app's own topics (``app.``) and Faust's changelogs and assignor (``app-``)."""
    return tuple(f"{app}{sep}" for app in apps for sep in ".-")
