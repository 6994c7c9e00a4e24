"""Pacing: the flush timer's (every interval from the start of the previous flush), and
the consumer's fetch wait (:class:`FetchWait`).

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


@dataclass
class FetchWait:
    """How long the broker may hold a fetch that finds no data, chosen per raw batch.

    aiokafka asks only for partitions whose fetched records are used up, and sends
    nothing more to a broker while a fetch is in flight.  Under steady load the raw
    partitions often all hold records, so the fetch in flight is for idle ones: at a
    long wait the raw partitions then wait for it (up to 1.5 s, the latency p99).  While
    a backlog drains, short waits cost 12-17% CPU per event instead
    (docs/benchmarks.md, seventeenth round).  So: long from a record ``backlog_s`` old
    until caught up or the records are fresh again (under steady load the worker is
    rarely exactly at the high watermark), short otherwise.
    """

    caught_up_ms: int
    backlog_ms: int
    #: a flush tick holds the worker up to a second: records that old are no backlog
    backlog_s: float = 5.0
    #: the wait last set (None: the consumer's own, ``backlog_ms``)
    current: int | None = None
    behind: bool = False

    def choose(self, caught_up: bool, lag_s: float) -> int | None:
        """The wait to set now, or None to leave it; ``lag_s``: the newest record's age."""
        if caught_up or lag_s < self.backlog_s / 2:
            self.behind = False
        elif lag_s >= self.backlog_s:
            self.behind = True
        want = self.backlog_ms if self.behind else self.caught_up_ms
        if want == (self.backlog_ms if self.current is None else self.current):
            return None
        self.current = want
        return want
