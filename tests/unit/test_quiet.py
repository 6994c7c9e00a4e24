"""The quiet follow-up flush: off at 0, at most one armed, a failing flush re-arms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from collector.engine.quiet import QuietFollowUp


async def test_off_at_zero_and_when_nothing_waits() -> None:
    spawned: list[Any] = []

    async def flush() -> None:
        raise AssertionError("must not flush")

    QuietFollowUp(0.0, lambda since: True, flush).after_flush(True, 0.0, spawned.append)
    QuietFollowUp(0.01, lambda since: True, flush).after_flush(False, 0.0, spawned.append)
    assert spawned == []


async def test_a_failing_flush_is_logged_and_the_next_flush_arms_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    async def flush() -> None:
        calls.append(1)
        raise ConnectionError("broker gone")

    follow = QuietFollowUp(0.001, lambda since: True, flush)
    tasks: list[asyncio.Future[Any]] = []
    follow.after_flush(True, 0.0, lambda c: tasks.append(asyncio.ensure_future(c)))
    await tasks[0]  # does not raise: the timer's next tick writes the rows instead
    assert calls == [1] and not follow.armed
    assert "quiet follow-up flush failed" in caplog.text
    follow.after_flush(True, 0.0, lambda c: tasks.append(asyncio.ensure_future(c)))
    await tasks[1]
    assert calls == [1, 1]
