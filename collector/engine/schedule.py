"""The flush timer's pace: every interval from the start of the previous flush.

Faust's timers sleep their interval after each run, so the flushes came every interval
plus the flush's own time (5.4-6.3 s at 5 s with 10,000 users), and an event waited
that much longer for the flush that makes it visible (the latency bench's p99).  Here
the timer only polls, and a flush is due one interval after the previous one was;
at least half an interval is left between the end of one and the start of the next,
so a flush slower than its interval does not run back to back with the next.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the longest the poll adds to a flush's start (seconds)
POLL_MAX_S = 0.25


@dataclass
class FixedRate:
    interval_s: float
    #: monotonic time the next flush is due (None: before the first poll)
    next_at: float | None = None

    @property
    def poll_s(self) -> float:
        """How often the timer asks :meth:`due`."""
        return min(POLL_MAX_S, self.interval_s / 4)

    def due(self, now: float) -> bool:
        """Whether a flush is due; the first is an interval after the first poll, as
        with Faust's timer."""
        if self.next_at is None:
            self.next_at = now + self.interval_s
        return now >= self.next_at

    def ran(self, ended: float) -> None:
        """The flush that was due has ended: the next is an interval after it was due
        (a poll's delay does not add up), and half an interval after ``ended``."""
        due = ended if self.next_at is None else self.next_at
        self.next_at = max(due + self.interval_s, ended + self.interval_s / 2)
