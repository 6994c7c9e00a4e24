"""The flush timer keeps its interval from start to start, not from end to start; the
fetch wait is short while the worker keeps up and long while it drains a backlog."""

from __future__ import annotations

import itertools

from collector.engine.schedule import FetchWait, FixedRate


def starts(schedule: FixedRate, run_s: float, until: float) -> list[float]:
    """Poll as the timer does; each flush takes ``run_s``; the times flushes start."""
    now, started = 0.0, []
    while now < until:
        if schedule.due(now):
            started.append(round(now, 2))
            schedule.ran(now + run_s)
            now += run_s
        now += schedule.poll_s
    return started


def test_flushes_start_an_interval_apart_however_long_they_take() -> None:
    got = starts(FixedRate(5.0), 0.625, 41.0)  # (Faust's timer: 5.6 s apart)
    assert len(got) == 8
    for k, start in enumerate(got, 1):  # late by at most one poll, never cumulatively
        assert 5.0 * k <= start <= 5.0 * k + 0.25


def test_a_flush_slower_than_its_interval_leaves_half_an_interval_free() -> None:
    got = starts(FixedRate(1.0), 1.5, 10.0)
    gaps = [b - a for a, b in itertools.pairwise(got)]
    assert all(2.0 <= gap <= 2.25 for gap in gaps)  # 1.5 s of flush, >= 0.5 s free


def test_the_poll_adds_at_most_a_quarter_second() -> None:
    assert FixedRate(5.0).poll_s == 0.25 and FixedRate(0.5).poll_s == 0.125


def waits(policy: FetchWait, batches: list[tuple[bool, float]]) -> list[int | None]:
    return [policy.choose(caught_up, lag_s) for caught_up, lag_s in batches]


def test_the_fetch_wait_is_short_while_fresh_records_come_and_long_in_a_backlog() -> None:
    policy = FetchWait(caught_up_ms=200, backlog_ms=1500, backlog_s=5.0)
    # steady load: never exactly at the high watermark, records under a second old
    assert waits(policy, [(False, 0.3), (False, 0.9), (False, 0.2)]) == [200, None, None]
    # a backlog: records 6 s old; it stays long while the lag drains past 5 s
    assert waits(policy, [(False, 6.0), (False, 30.0), (False, 4.0)]) == [1500, None, None]
    # fresh again (under half the threshold), or caught up: short again
    assert waits(policy, [(False, 2.0)]) == [200]
    assert waits(policy, [(False, 7.0), (True, 7.0)]) == [1500, 200]


def test_a_worker_that_starts_behind_keeps_the_consumers_own_wait() -> None:
    policy = FetchWait(caught_up_ms=200, backlog_ms=1500)
    assert waits(policy, [(False, 60.0), (False, 40.0)]) == [None, None]
    assert policy.current is None


def test_one_wait_throughout_when_both_are_equal() -> None:
    policy = FetchWait(caught_up_ms=1500, backlog_ms=1500)
    assert waits(policy, [(False, 0.1), (False, 9.0), (True, 0.0)]) == [None, None, None]
