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


async def test_a_flush_during_the_delay_is_checked_when_the_first_span_was_busy() -> None:
    """The last event came after flush A began and before flush B: A's span is busy,
    B's is quiet.  Without a second check the sessions waited for the next tick."""
    calls: list[int] = []
    asked: list[float] = []

    async def flush() -> None:
        calls.append(1)
        follow.after_flush(True, 30.0, spawn)  # its own flush: does not arm again

    def quiet_since(since: float) -> bool:
        asked.append(since)
        return since >= 10.0  # the last event came at 7

    follow = QuietFollowUp(0.001, quiet_since, flush)
    tasks: list[asyncio.Future[Any]] = []

    def spawn(check: Any) -> None:
        tasks.append(asyncio.ensure_future(check))

    follow.after_flush(True, 5.0, spawn)  # flush A
    follow.after_flush(True, 10.0, spawn)  # flush B, while A's check waits
    assert len(tasks) == 1
    await tasks[0]
    assert asked == [5.0, 10.0] and calls == [1] and not follow.armed
    assert len(tasks) == 1
