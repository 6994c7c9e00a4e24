"""The bounded producer flush: a hard exit is armed at shutdown only, never at a rebalance.

Faust calls ``_producer_flush`` from ``on_partitions_revoked`` as well as from
``on_stop``.  Arming the exit there made every worker that lost partitions in a
rebalance exit with code 1 a minute later (seen in the failover e2e test).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from collector.adapters import app as app_module
from collector.config import Settings


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    calls: list[float] = []
    monkeypatch.setattr(app_module, "_hard_exit", lambda _log, after: calls.append(after))
    return calls


def quick_app() -> Any:
    app = app_module.new_app(Settings())
    app.shutdown_flush_timeout = 0.05
    return app


async def test_a_rebalance_flush_arms_no_exit(exits: list[float]) -> None:
    app = quick_app()
    assert not app.should_stop
    await app._producer_flush(logging.getLogger("test"))
    await asyncio.sleep(0.3)  # past 2 x the flush bound
    assert exits == []


async def test_a_shutdown_flush_arms_the_exit(exits: list[float]) -> None:
    app = quick_app()
    app._stopped.set()  # what mode's Service.stop does before on_stop
    await app._producer_flush(logging.getLogger("test"))
    await asyncio.sleep(0.3)
    assert exits == [pytest.approx(0.1)]
