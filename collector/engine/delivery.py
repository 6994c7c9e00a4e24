"""Delivery until acknowledged: a produce that fails is sent again, never raised.

A delivery future that fails (the topic refuses writes, a request timed out after the
producer's own retries) used to raise through the batch: the retry path then counted
the batch twice, skipped its changelog records as replays and dead-lettered valid,
already-counted events.  Here the failed records are produced again with backoff until
the broker acks them, and the caller's batch waits.  A batch that waits is not acked, so
no offset past it is committed: a topic that refuses writes stalls its partitions (shown
by :class:`ProduceHealth` on ``/readyz`` and in metrics) and they resume by themselves
once it accepts writes again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class Stopping(Exception):
    """The worker is stopping: a failed produce is not retried any more.

    Retrying for ever kept a worker alive after SIGTERM (its batch never acked, the
    shutdown waiting for it).  What was not delivered was not acked either, so no offset
    past it is committed and the next start produces it again.
    """


@dataclass(slots=True)
class TopicHealth:
    #: UTC epoch seconds of the first failure of the current outage (None: healthy)
    failing_since: float | None = None
    last_error: str = ""
    failures: int = 0


class ProduceHealth:
    """Failed deliveries per topic: what readiness and the metrics report."""

    def __init__(self, on_failure: Callable[[str], None] | None = None,
                 on_state: Callable[[str, bool], None] | None = None) -> None:
        self.topics: dict[str, TopicHealth] = {}
        self._on_failure = on_failure
        self._on_state = on_state
        #: deliveries being retried now, per topic
        self.retrying: dict[str, int] = {}

    def failed(self, topic: str, exc: BaseException) -> None:
        health = self.topics.setdefault(topic, TopicHealth())
        if health.failing_since is None:
            health.failing_since = time.time()
            if self._on_state is not None:
                self._on_state(topic, False)
        health.last_error = f"{type(exc).__name__}: {exc}"[:300]
        health.failures += 1
        if self._on_failure is not None:
            self._on_failure(topic)

    def delivered(self, topic: str) -> None:
        health = self.topics.get(topic)
        if health is not None and health.failing_since is not None and not self.retrying.get(
                topic):
            log.warning("producing to %s works again after %.1fs", topic,
                        time.time() - health.failing_since)
            health.failing_since = None
            if self._on_state is not None:
                self._on_state(topic, True)

    def failing(self) -> dict[str, TopicHealth]:
        return {t: h for t, h in self.topics.items() if h.failing_since is not None}


async def until_delivered(
    fut: Awaitable[Any], again: Callable[[], Awaitable[Awaitable[Any]]], topic: str,
    health: ProduceHealth, max_backoff: float = 5.0,
    stopping: Callable[[], bool] = lambda: False,
) -> Any:
    """The record metadata of ``fut``; on failure ``again()`` sends anew, with backoff,
    until the worker is ``stopping`` (then :class:`Stopping`)."""
    delay = 0.1
    retrying = False
    try:
        while True:
            try:
                meta = await fut
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker refused or timed out: produce again
                if not retrying:
                    retrying = True
                    health.retrying[topic] = health.retrying.get(topic, 0) + 1
                health.failed(topic, exc)
                if stopping():
                    raise Stopping(f"delivery to {topic} failed while stopping: {exc!r}") from exc
                log.warning("delivery to %s failed (%r); producing again in %.1fs",
                            topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
                fut = await again()
                continue
            if retrying:
                retrying = False
                health.retrying[topic] -= 1
            health.delivered(topic)
            return meta
    finally:
        if retrying:
            health.retrying[topic] -= 1
