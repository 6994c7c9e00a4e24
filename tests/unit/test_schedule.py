"""The flush timer keeps its interval from start to start, not from end to start."""

from __future__ import annotations

import itertools

from collector.engine.schedule import FixedRate


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
