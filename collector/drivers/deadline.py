"""A timeout that does not blame a service for the time the event loop was busy.

``asyncio.timeout(0.25)`` around a Redis call fires when the loop was blocked for 0.25 s
(a long flush, a collection, no CPU on a loaded host) even though Redis answered in a
millisecond: the reply sits in the socket and the timer runs before the task that would
read it. Under catch-up that made the enricher open its Redis circuit and, with MySQL
down, enrich thousands of events as ``unknown``.

``deadline`` fires like ``asyncio.timeout`` when the loop was on time; when its timer
runs late by more than ``slack`` the loop was starved, so it gives the call another
``seconds`` to read what is already waiting, at most ``extensions`` times. A service that
really hangs is still cut off after about ``seconds`` (an idle loop) and never later than
``(1 + extensions) * seconds`` plus the loop's own delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: how late a timer may run before the loop counts as starved: ordinary scheduling
#: jitter is well under this; a blocked loop (the case we forgive) is far over it
MIN_SLACK_S = 0.05


@asynccontextmanager
async def deadline(seconds: float, *, extensions: int = 3,
                   slack: float | None = None) -> AsyncIterator[None]:
    """Like ``asyncio.timeout(seconds)``, but a late timer (a starved loop) extends it."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    loop = asyncio.get_running_loop()
    tolerance = max(MIN_SLACK_S, seconds / 10) if slack is None else slack
    left = extensions
    async with asyncio.timeout(None) as guard:
        handle: asyncio.TimerHandle | None = None

        def fire(due: float) -> None:
            nonlocal handle, left
            now = loop.time()
            if now - due > tolerance and left > 0:
                left -= 1
                handle = loop.call_at(now + seconds, fire, now + seconds)
                return
            handle = None
            guard.reschedule(now)  # asyncio's own cancellation and TimeoutError

        due = loop.time() + seconds
        handle = loop.call_at(due, fire, due)
        try:
            yield
        finally:
            if handle is not None:
                handle.cancel()


__all__ = ["MIN_SLACK_S", "deadline"]
