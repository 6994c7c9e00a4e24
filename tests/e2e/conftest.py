"""Fixtures for tests that run real worker processes against the local stack."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.workers import Worker, isolated_env


@pytest.fixture
def worker_factory(stack: object, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Build workers with isolated topics; every one started is stopped at teardown."""
    started: list[Worker] = []

    def make(env: dict[str, str] | None = None, name: str = "worker") -> Worker:
        chosen = env if env is not None else isolated_env(tmp_path)
        worker = Worker(chosen, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield make
    for worker in started:
        worker.stop()
