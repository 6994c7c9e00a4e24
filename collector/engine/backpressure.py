"""Pause consuming while a sink cannot keep up, instead of buffering rows without bound.

Rows wait for a sink in memory (latest value per row, so one per open window); during a
MySQL outage with 10,000 active users that is 10,000 more rows every window.  Past
``sinks.max_pending_rows`` the raw partitions are paused (the consumer's own
``pause_partitions``: fetching stops, heartbeats and the web server go on) and Kafka
holds the backlog; they resume below ``resume_fraction`` of it, so the worker does not
flap at the threshold.  Like quix-streams' sink backpressure, but by row count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class Backpressure:
    """Which partitions to pause or resume, from the sinks' pending row counts."""

    def __init__(self, max_pending: int, resume_fraction: float = 0.5) -> None:
        self.max_pending = max_pending
        self.resume_below = int(max_pending * resume_fraction)
        self.paused: set[Any] = set()
        self.engaged = False

    def decide(self, pending: int, owned: Iterable[Any]) -> tuple[set[Any], set[Any]]:
        """``(pause, resume)``: partitions to pause and to resume now."""
        owned = set(owned)
        self.paused &= owned  # a rebalance took some away: nothing to resume there
        if not self.engaged and pending > self.max_pending:
            self.engaged = True
            log.warning("sinks hold %d rows (limit %d): pausing %d raw partitions until "
                        "they drain below %d", pending, self.max_pending, len(owned),
                        self.resume_below)
        elif self.engaged and pending < self.resume_below:
            self.engaged = False
            log.warning("sinks hold %d rows: resuming %d raw partitions", pending,
                        len(self.paused))
            resume, self.paused = self.paused, set()
            return set(), resume
        if self.engaged:
            pause = owned - self.paused  # newly assigned ones too
            self.paused |= pause
            return pause, set()
        return set(), set()
